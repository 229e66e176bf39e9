"""Pick between box-segmenter checkpoints on held-out synthetic slices (never the evaluation queries).

    python -m services.localization.boxseg_selection services/localization/checkpoints/boxseg OTHER_DIR

Slices: 128 from each of two synthetic volumes (seeds 9100, 9101: no training run draws these), sampled
as training samples them (jittered boxes, so some slices hold no object). Prints each checkpoint's mean
Dice; docs/localization.md records the choice made with it (0.474 vs 0.429 for the 3fa36eb weights).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from services.localization import checkpoint
from services.localization.boxseg import BoxPromptSegmenter
from services.localization.train_boxseg import SliceSampler, synthetic_slice_volumes

SEEDS = (9100, 9101)
PER_VOLUME = 128


def held_out_slices() -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    return [SliceSampler(synthetic_slice_volumes(1, seed=seed), seed - 9050)(PER_VOLUME) for seed in SEEDS]


def mean_dice(folder: Path, slices: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> float:
    model = BoxPromptSegmenter()
    model.load_state_dict(checkpoint.load_state(folder))
    model.eval()
    scores = []
    for images, boxes, targets in slices:
        with torch.no_grad():
            pred = (model(torch.from_numpy(images), torch.from_numpy(boxes)) > 0).float()
        truth = torch.from_numpy(targets)
        inter = (pred * truth).sum((1, 2, 3))
        scores.append(((2 * inter + 1) / (pred.sum((1, 2, 3)) + truth.sum((1, 2, 3)) + 1)).numpy())
    return float(np.concatenate(scores).mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.localization.boxseg_selection", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", type=Path, nargs="+")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    slices = held_out_slices()
    for folder in args.checkpoints:
        sys.stdout.write(f"{folder}: held-out synthetic slice Dice {mean_dice(folder, slices):.4f}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
