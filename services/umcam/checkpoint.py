"""Checkpoint folders of the umcam networks: weights, config and metrics side by side.

    checkpoints/<name>/model.safetensors   float32 state dict
    checkpoints/<name>/config.json         network arguments, training arguments, data
    checkpoints/<name>/metrics.json        training metrics

Names: ``classifier`` (served as ``umcam_cam``), ``unet_weak_s<seed>`` (seed 0 served as
``umcam_unet``), ``unet_full_s<seed>`` (the fully supervised upper bound; evaluation only).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from services.umcam.networks import CamClassifier, UNet

__all__ = ["CHECKPOINTS", "CLASSIFIER", "SERVED_UNET", "load_classifier", "load_unet", "read_json", "save",
           "unet_name"]

CHECKPOINTS = Path(__file__).with_name("checkpoints")
WEIGHTS, CONFIG, METRICS = "model.safetensors", "config.json", "metrics.json"
CLASSIFIER = "classifier"


def unet_name(supervision: str, seed: int) -> str:
    """``unet_weak_s0``, ``unet_full_s1``, …"""
    if supervision not in ("weak", "full"):
        raise ValueError(f"supervision must be 'weak' or 'full', got {supervision!r}")
    return f"unet_{supervision}_s{seed}"


SERVED_UNET = unet_name("weak", 0)


def save(name: str, model: torch.nn.Module, config: dict[str, Any], metrics: dict[str, Any]) -> Path:
    folder = CHECKPOINTS / name
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().float().contiguous() for k, v in model.state_dict().items()}, str(folder / WEIGHTS))
    (folder / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    (folder / METRICS).write_text(json.dumps(metrics, indent=2) + "\n")
    return folder


def read_json(name: str, which: str = CONFIG) -> dict[str, Any]:
    path = CHECKPOINTS / name / which
    return json.loads(path.read_text()) if path.is_file() else {}


def _load(name: str, model: torch.nn.Module) -> torch.nn.Module:
    path = CHECKPOINTS / name / WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint {path}; train it first (docs/umcam.md)")
    model.load_state_dict(load_file(str(path)))
    return model.eval()


def load_classifier(name: str = CLASSIFIER) -> CamClassifier:
    width = int(read_json(name).get("network", {}).get("width", 16))
    return _load(name, CamClassifier(in_channels=1, width=width))  # type: ignore[return-value]


def load_unet(name: str = SERVED_UNET) -> UNet:
    width = int(read_json(name).get("network", {}).get("width", 16))
    return _load(name, UNet(in_channels=1, out_channels=2, width=width))  # type: ignore[return-value]
