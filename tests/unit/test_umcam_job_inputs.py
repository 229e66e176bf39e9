"""What a UM-CAM job refuses before any model runs: slice labels that do not fit, and inputs that are not MR."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from services.common.input_checks import MIN_AIR_FRACTION, ModalityError, check_modality
from services.common.volume import Volume, write_volume
from services.umcam.slice_labels import check_slice_count, header_slice_count, parse_slice_labels
from tests.conftest import write_small_ct


@pytest.mark.parametrize(("text", "says"), [
    ("[0, 1, 1", "JSON list"),
    ('{"0": 1}', "non-empty JSON list"),
    ("[]", "non-empty JSON list"),
    ("[0, 2, 1]", "entries [1]"),
    ("[0, true, 1]", "entries [1]"),
    ("[0, 0.5]", "entries [1]"),
    ("[0, 0, 0]", "at least one slice"),
])
def test_bad_slice_labels_say_what_to_fix(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=r"slice_labels|no slice") as refused:
        parse_slice_labels(text)
    assert says in str(refused.value)


def test_slice_labels_parse_and_count() -> None:
    assert parse_slice_labels("[0, 1, 1.0, 0]") == [0, 1, 1, 0]
    assert check_slice_count([0, 1, 0], 3) is None
    message = check_slice_count([0, 1], 3)
    assert message is not None and "2 entries" in message and "3 slices" in message


def test_header_slice_count_is_the_stored_third_axis(tmp_path: Path) -> None:
    volume = Volume(np.zeros((7, 5, 4), np.int16), (1.0, 1.0, 2.0))  # (z, y, x): 7 slices along k
    assert header_slice_count(write_volume(volume, tmp_path / "v.nii.gz")) == 7
    assert header_slice_count(write_volume(volume, tmp_path / "v.nrrd")) == 7
    flat = tmp_path / "flat.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((5, 4), np.int16)), str(flat))
    assert header_slice_count(flat) is None  # a 2-D image: the job says what is wrong with it
    (tmp_path / "junk.nii").write_bytes(b"not an image")
    assert header_slice_count(tmp_path / "junk.nii") is None


def test_an_mr_model_refuses_a_ct_and_takes_an_mr(tmp_path: Path) -> None:
    from services.common.volume import read_volume

    ct = read_volume(write_small_ct(tmp_path / "ct.nii.gz")).array
    with pytest.raises(ModalityError) as refused:
        check_modality(ct, None, "MR")
    assert refused.value.kind == "not-mr" and "an MR image" in str(refused.value)
    overridden = check_modality(ct, None, "MR", allow_mismatch=True)
    assert overridden["override"] and not overridden["passed"] and overridden["warnings"]

    mr = np.random.default_rng(0).integers(0, 255, (8, 16, 16)).astype(np.uint8)  # magnitude: never negative
    check = check_modality(mr, None, "MR")
    assert check["passed"] and check["method"] == "hounsfield-air" and check["air_fraction"] < MIN_AIR_FRACTION
    with pytest.raises(ModalityError) as mismatch:
        check_modality(mr, "CT", "MR")
    assert mismatch.value.kind == "modality-mismatch"
    assert check_modality(mr, "MR", "MR")["method"] == "dicom-modality"
