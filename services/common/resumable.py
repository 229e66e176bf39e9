"""Resumable CPU training runs, shared by the families' trainers: seeding, the bfloat16 check, the stop flag
that SIGTERM / Ctrl-C sets, and `Resume`, the state a run writes every few minutes and continues from.

A trainer checks ``STOP`` between iterations; when it is set it saves its `Resume` state and raises
`Interrupted`, and the same command continues from the saved iteration.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import signal
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["STATE", "STOP", "Interrupted", "Resume", "bf16_available", "environment", "seed_everything",
           "stop_on_signals"]


def seed_everything(seed: int, threads: int | None) -> None:
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    np.random.seed(seed)


def bf16_available() -> bool:
    """bfloat16 autocast pays off on CPUs with AVX-512 BF16 / AMX (about 2x here); elsewhere it is slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


STATE = "train_state.pt"  # resumable training state, written beside the checkpoint files
STOP = threading.Event()  # set by SIGTERM / SIGINT in the CLI: a resumable run saves its state and stops


class Interrupted(RuntimeError):
    """A resumable run was asked to stop; its state is saved and the same command continues it."""


def stop_on_signals() -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: STOP.set())


@dataclasses.dataclass
class Resume:
    """Where a run keeps its resumable state (``folder / STATE``) and how often it writes it.

    The state holds the weights, Adam's moments, the iteration count, the loss average, the learning
    curve, the data generators' and torch's random states and the arguments that define the run; a run
    whose arguments differ from the saved ones refuses to resume (a different run in the same folder)."""

    folder: Path
    args: dict[str, Any]
    every_seconds: float = 300.0
    generators: tuple[np.random.Generator, ...] = ()

    @property
    def path(self) -> Path:
        return Path(self.folder) / STATE

    def load(self) -> dict[str, Any] | None:
        if not self.path.is_file():
            return None
        state = torch.load(self.path, map_location="cpu", weights_only=False)
        if state["args"] != self.args:
            raise ValueError(f"{self.path} belongs to another run: saved arguments {state['args']}, "
                             f"asked {self.args}; use another --out or delete the file")
        for gen, saved in zip(self.generators, state["generators"], strict=True):
            gen.bit_generator.state = saved
        torch.set_rng_state(state["torch_rng"])
        return state

    def save(self, state: dict[str, Any]) -> None:
        state = {**state, "args": self.args, "generators": [g.bit_generator.state for g in self.generators],
                 "torch_rng": torch.get_rng_state()}
        Path(self.folder).mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)  # atomic: a kill mid-write leaves the previous state intact


def environment(threads: int | None) -> dict[str, Any]:
    return {"torch": torch.__version__, "threads": torch.get_num_threads() if threads is None else threads,
            "python": platform.python_version(), "machine": platform.machine()}
