"""Checkpoint folders of the localization models: weights, config and metrics side by side.

    <folder>/model.safetensors   float32 state dict
    <folder>/config.json         network arguments, grid / input spec, training arguments
    <folder>/metrics.json        training metrics; evaluation merges its results in
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

CHECKPOINTS = Path(__file__).with_name("checkpoints")
WEIGHTS, CONFIG, METRICS = "model.safetensors", "config.json", "metrics.json"


def save(folder: Path, model: torch.nn.Module, config: dict[str, Any], metrics: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(folder / WEIGHTS))
    (folder / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    (folder / METRICS).write_text(json.dumps(metrics, indent=2) + "\n")


def load_state(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / WEIGHTS))


def read_json(folder: Path, name: str) -> dict[str, Any]:
    path = folder / name
    return json.loads(path.read_text()) if path.is_file() else {}


def update_metrics(folder: Path, **sections: Any) -> None:
    metrics = read_json(folder, METRICS) | sections
    (folder / METRICS).write_text(json.dumps(metrics, indent=2) + "\n")
