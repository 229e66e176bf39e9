"""Checkpoint folders: one folder per trained model, built and parsed here only.

    <folder>/model.safetensors   network weights (float32 state dict)
    <folder>/config.json         network config, preprocessing, classes, training arguments
    <folder>/metrics.json        training metrics, then evaluation results merged in by evaluate.py
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from services.segmentation.pctnet import PCTNet, PCTNetConfig, build_pctnet

__all__ = ["WEIGHTS", "CONFIG", "METRICS", "save", "load_config", "load_model", "load_metrics", "update_metrics",
           "resolve"]

WEIGHTS, CONFIG, METRICS = "model.safetensors", "config.json", "metrics.json"


def resolve(path: str | Path) -> Path:
    """A checkpoint folder from the folder itself or its weights file."""
    path = Path(path)
    folder = path.parent if path.suffix == ".safetensors" else path
    if not (folder / WEIGHTS).is_file():
        raise FileNotFoundError(f"no {WEIGHTS} in {folder}: not a checkpoint folder")
    return folder


def _json(value: Any) -> str:
    """JSON without NaN (not valid JSON): missing values are written as null."""

    def clean(v: Any) -> Any:
        if isinstance(v, float) and math.isnan(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(value), indent=2, allow_nan=False) + "\n"


def save(folder: str | Path, model: torch.nn.Module, config: dict[str, Any], metrics: dict[str, Any]) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS))
    (folder / CONFIG).write_text(_json(config))
    (folder / METRICS).write_text(_json(metrics))
    return folder / WEIGHTS


def load_config(folder: str | Path) -> dict[str, Any]:
    return json.loads((resolve(folder) / CONFIG).read_text())


def load_metrics(folder: str | Path) -> dict[str, Any]:
    path = resolve(folder) / METRICS
    return json.loads(path.read_text()) if path.is_file() else {}


def update_metrics(folder: str | Path, key: str, value: Any) -> None:
    metrics = load_metrics(folder)
    metrics[key] = value
    (resolve(folder) / METRICS).write_text(_json(metrics))


def load_model(folder: str | Path) -> PCTNet:
    """The network of a checkpoint folder, weights loaded, in eval mode."""
    folder = resolve(folder)
    net = build_pctnet(PCTNetConfig.from_dict(load_config(folder)["model"]))
    net.load_state_dict(load_file(str(folder / WEIGHTS)))
    return net.eval()


def load_matching(model: torch.nn.Module, weights: str | Path) -> tuple[list[str], list[str]]:
    """Initialise every parameter/buffer whose name and shape match (MIS-FM ``ckpt_init_mode=0``).
    Returns (loaded, skipped) names."""
    state = load_file(str(resolve(weights) / WEIGHTS))
    own = model.state_dict()
    loaded = [k for k, v in state.items() if k in own and own[k].shape == v.shape]
    skipped = [k for k in own if k not in loaded]
    model.load_state_dict({k: state[k] for k in loaded}, strict=False)
    return loaded, skipped
