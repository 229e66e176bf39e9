"""The served localization checkpoints and how to load them."""

from __future__ import annotations

from pathlib import Path

import torch

from services.localization import checkpoint
from services.localization.boxseg import BoxPromptSegmenter
from services.localization.network import MedLAM

MEDLAM_CHECKPOINT = checkpoint.CHECKPOINTS / "medlam"
BOXSEG_CHECKPOINT = checkpoint.CHECKPOINTS / "boxseg"


def load_medlam(folder: Path = MEDLAM_CHECKPOINT) -> MedLAM:
    model = MedLAM()
    model.load_state_dict(checkpoint.load_state(folder))
    return model.eval()


def load_boxseg(folder: Path = BOXSEG_CHECKPOINT) -> BoxPromptSegmenter:
    model = BoxPromptSegmenter()
    model.load_state_dict(checkpoint.load_state(folder))
    return model.eval()


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)
