"""Held-out Dice of a trained Hermes checkpoint on every test volume of ``data.SPLITS``, on the model grid.

    python -m services.hermes.heldout .cache/hermes_runs/hermes_s0      # JSON: {"<volume>:<task>": Dice}

A first check after training, not the family evaluation (issue #21 asks for `medstack evaluate hermes`, with
the baselines in the same run and the masks scored on the input grid). Each test volume runs once with the
task list of its modality (`inference` policy "modality") and every task the volume labels is scored
(threshold 0.5).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from services.hermes.data import test_volumes
from services.hermes.inference import HermesModel, HermesSegmenter
from services.hermes.tasks import TASKS
from services.segmentation.evaluate import dice

__all__ = ["heldout_dice", "main"]


def heldout_dice(model: HermesModel, segmenter: HermesSegmenter | None = None) -> dict[str, float | None]:
    """Dice per (test volume, labelled task); None where prediction and label are both empty."""
    segmenter = segmenter or HermesSegmenter()
    scores: dict[str, float | None] = {}
    for name, volume in test_volumes().items():
        run = segmenter.run_list(model, [t for t in TASKS if t.name in volume.masks], volume.modality)
        probs = segmenter.grid_probabilities(volume.image.array, model, run, volume.modality)
        for prob, task in zip(probs, run, strict=True):
            if task.name in volume.masks:
                value = dice(prob > 0.5, volume.masks[task.name])
                scores[f"{name}:{task.name}"] = None if math.isnan(value) else round(value, 4)
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.hermes.heldout", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.monotonic()
    scores = heldout_dice(HermesModel.from_checkpoint(args.checkpoint))
    print(json.dumps({"checkpoint": str(args.checkpoint), "dice": scores,  # noqa: T201 - CLI output
                      "seconds": round(time.monotonic() - start, 1)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
