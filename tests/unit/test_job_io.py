"""services.common.job_io and the job functions' typed input errors, without a broker."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from services.common.job_io import (
    MASK_NAME,
    PREVIEW_NAME,
    SEG_NAME,
    JobInputError,
    structure_volumes,
    write_json,
    write_mask_outputs,
)
from services.common.volume import Volume, read_volume
from services.segmentation.preprocessing import SPEC, PreprocessingSpec


def _volume(array: np.ndarray) -> Volume:
    return Volume(array, spacing=(2.0, 2.0, 5.0), origin=(0.0, 0.0, 0.0), direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))


def test_the_manifest_carries_the_preprocessing_spec_without_loss() -> None:
    assert PreprocessingSpec.from_manifest(json.loads(json.dumps(SPEC.to_dict()))) == SPEC
    raw = PreprocessingSpec.from_manifest({"orientation": "any", "spacing": None, "clip_hu": None})
    assert (raw.orientation, raw.spacing, raw.clip_hu, raw.pad_value) == (None, None, None, -1000.0)


def test_volumes_in_ml_and_outputs_written_whole(tmp_path: Path) -> None:
    labels = np.zeros((4, 6, 6), np.uint8)
    labels[:2, :3, :3] = 2  # 18 voxels of 20 mm³
    image, mask = _volume(np.full(labels.shape, -500, np.int16)), _volume(labels)
    assert structure_volumes(mask, {1: "a", 2: "b"}) == [
        {"label": 1, "name": "a", "voxels": 0, "volume_ml": 0.0},
        {"label": 2, "name": "b", "voxels": 18, "volume_ml": 0.36},
    ]
    artifacts = write_mask_outputs(tmp_path, image, mask, {0: "background", 2: "b"}, {"name": "m"}, series=None)
    assert artifacts == [MASK_NAME, "summary.json", PREVIEW_NAME]
    assert np.array_equal(read_volume(tmp_path / MASK_NAME).array, labels)
    write_json(tmp_path / "summary.json", {"artifacts": artifacts})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(artifacts)  # no temporary file left behind
    assert SEG_NAME not in artifacts


def test_valuation_job_types_its_input_errors(tmp_path: Path) -> None:
    from services.valuation.job import valuation_job

    with pytest.raises(JobInputError) as bad:
        valuation_job({"model_family": "resnet", "input": "in.npz"}, tmp_path)
    assert bad.value.kind == "invalid-params" and "resnet18_w" in str(bad.value)
    with pytest.raises(JobInputError) as missing:
        valuation_job({"input": "in.npz"}, tmp_path)
    assert missing.value.kind == "missing-input"
    (tmp_path / "in.npz").write_bytes(b"not an npz")
    with pytest.raises(JobInputError) as unreadable:
        valuation_job({"input": "in.npz"}, tmp_path)
    assert unreadable.value.kind == "invalid-dataset"
