"""The UM-CAM job functions with predictors whose answer is known (no Triton, no trained weights).

A synthetic head: a bright ellipsoid "brain" in a dimmer shell, air around it, on a grid with
anisotropic spacing. The fake U-Net calls every pixel brighter than the shell brain; the fake
classifier's CAMs are the image itself. What the jobs add — slicing, batching, the way back onto the
input grid, slice order, artifacts, typed refusals — is then checked exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from services.common.job_io import JobInputError
from services.common.volume import Volume, read_volume, write_volume
from services.umcam.job import (
    BATCH_SLICES,
    UMCAM_NAME,
    run_brain_extraction,
    run_pseudo_labels,
)
from tests.conftest import write_small_ct

FACTS = {"name": "umcam_test", "version": "1", "sha256": "0" * 64}
BRAIN_LEVEL = 0.5  # normalised intensity: the brain is brighter, shell and air darker


def synthetic_head(shape: tuple[int, int, int] = (30, 90, 80), island: bool = True) -> tuple[Volume, np.ndarray]:
    """(T1-like volume, true brain mask): uint8 magnitudes, 1.1 × 1.3 × 3 mm, stored inferior → superior."""
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    r = ((z - shape[0] / 2) / (shape[0] * 0.45)) ** 2 + ((y - shape[1] / 2) / (shape[1] * 0.42)) ** 2 \
        + ((x - shape[2] / 2) / (shape[2] * 0.42)) ** 2
    brain = r < 0.55
    image = np.zeros(shape, np.uint8)
    image[r < 1] = 80  # scalp and skull
    image[brain] = 200
    if island:  # a bright blob outside the head: the largest component drops it
        image[shape[0] // 2, 2:5, 2:5] = 200
    volume = Volume(image, (1.1, 1.3, 3.0), origin=(-40.0, -60.0, -45.0))
    return volume, brain


def unet(slices: np.ndarray) -> np.ndarray:
    """Logits (background, brain) of a known rule: brain where the slice is brighter than BRAIN_LEVEL."""
    assert slices.shape[1:] == (1, 128, 128) and len(slices) <= BATCH_SLICES
    brain = np.where(slices[:, 0] > BRAIN_LEVEL, 4.0, -4.0).astype(np.float32)
    return np.stack([-brain, brain], axis=1)


def classifier(slices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Presence = any brain-bright pixel; three CAMs = the slice's brightness in [0, 1]."""
    cam = np.clip((slices[:, 0] + 1) / 2, 0, 1)
    presence = (slices[:, 0] > BRAIN_LEVEL).any(axis=(1, 2)).astype(np.float32)[:, None]
    return presence, np.repeat(cam[:, None], 3, axis=1).astype(np.float32)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.sum(a & b) / (np.sum(a) + np.sum(b)))


def test_brain_mask_lies_on_the_input_grid(tmp_path: Path) -> None:
    volume, brain = synthetic_head()
    upload = write_volume(volume, tmp_path / "head.nii.gz")
    stages: list[str] = []
    summary = run_brain_extraction(upload, tmp_path / "out", FACTS, unet, lambda stage, f: stages.append(stage))
    mask = read_volume(tmp_path / "out" / "mask.nii.gz")
    assert mask.same_grid(read_volume(upload)) and mask.array.dtype == np.uint8
    assert dice(mask.array > 0, brain) > 0.95  # 2 mm model pixels against 1.1–1.3 mm voxels
    assert not mask.array[volume.shape[0] // 2, 2:5, 2:5].any(), "the island outside the head was kept"
    (structure,) = summary["structures"]
    assert structure["name"] == "brain" and structure["voxels"] == int(mask.array.sum())
    assert structure["volume_ml"] == pytest.approx(mask.array.sum() * 1.1 * 1.3 * 3.0 / 1000, abs=1e-3)
    assert summary["model"] == FACTS and summary["input_check"]["method"] == "hounsfield-air"
    assert sorted(summary["artifacts"]) == ["mask.nii.gz", "preview.png", "summary.json"]
    assert (tmp_path / "out" / "preview.png").read_bytes()[:4] == b"\x89PNG"
    assert stages[0] == "loading" and stages[-1] == "done" and "inference" in stages

    kept = run_brain_extraction(upload, tmp_path / "islands", FACTS, unet, largest_component=False)
    assert kept["structures"][0]["voxels"] > structure["voxels"]


def _flipped(volume: Volume) -> Volume:
    """The same head stored superior → inferior (a NIfTI whose k axis points down)."""
    return Volume.from_sitk(sitk.Flip(volume.to_sitk(), [False, False, True]))


@pytest.mark.parametrize("stored_downwards", [False, True])
def test_pseudo_labels_only_in_slices_labelled_present(tmp_path: Path, stored_downwards: bool) -> None:
    volume, brain = synthetic_head(island=False)
    if stored_downwards:
        volume, brain = _flipped(volume), brain[::-1]
    upload = write_volume(volume, tmp_path / "head.nii.gz")
    labels = [0] * volume.shape[0]
    present = [k for k in range(volume.shape[0]) if brain[k].any()]
    for k in present[: len(present) // 2]:  # the user labels half of the brain's slices (stored order)
        labels[k] = 1
    summary = run_pseudo_labels(upload, tmp_path / "out", labels, FACTS, classifier)

    umcam = read_volume(tmp_path / "out" / UMCAM_NAME)
    pseudo = read_volume(tmp_path / "out" / "mask.nii.gz")
    assert umcam.same_grid(volume) and pseudo.same_grid(volume)
    assert umcam.array.dtype == np.float32 and 0 <= umcam.array.min() and umcam.array.max() <= 1
    labelled = np.asarray(labels, bool)
    assert not pseudo.array[~labelled].any(), "a slice labelled absent got a pseudo-label"
    assert pseudo.array[labelled].any(axis=(1, 2)).all(), "a slice labelled present got no pseudo-label"
    assert [s["label"] for s in summary["slices"]] == labels
    # presence comes back in the user's (stored) order: 1 exactly where the slice shows brain
    assert [s["presence"] for s in summary["slices"]] == [float(brain[k].any()) for k in range(len(labels))]
    assert summary["classifier_vs_labels"]["present_and_seen"] == sum(labels)
    assert UMCAM_NAME in summary["artifacts"] and "mask.nii.gz" in summary["artifacts"]


def test_pseudo_label_job_refusals_say_what_to_fix(tmp_path: Path) -> None:
    volume, _ = synthetic_head(island=False)
    upload = write_volume(volume, tmp_path / "head.nii.gz")
    with pytest.raises(JobInputError) as short:
        run_pseudo_labels(upload, tmp_path / "a", [1] * (volume.shape[0] - 1), FACTS, classifier)
    assert short.value.kind == "slice-labels-mismatch" and f"{volume.shape[0]} slices" in str(short.value)

    sagittal = Volume.from_sitk(sitk.PermuteAxes(volume.to_sitk(), [2, 1, 0]))
    upload = write_volume(sagittal, tmp_path / "sagittal.nii.gz")
    with pytest.raises(JobInputError) as sideways:
        run_pseudo_labels(upload, tmp_path / "b", [1] * sagittal.shape[0], FACTS, classifier)
    assert sideways.value.kind == "slice-axis-not-axial"


def test_a_ct_is_not_an_mr(tmp_path: Path) -> None:
    ct = write_small_ct(tmp_path / "ct.nii.gz")
    with pytest.raises(JobInputError) as refused:
        run_brain_extraction(ct, tmp_path / "out", FACTS, unet)
    assert refused.value.kind == "not-mr"
    with pytest.raises(JobInputError) as refused:
        run_pseudo_labels(ct, tmp_path / "out", [1] * read_volume(ct).shape[0], FACTS, classifier)
    assert refused.value.kind == "not-mr"


def test_a_batch_of_slices_fits_the_served_models() -> None:
    from services.umcam.export_specs import SPECS

    assert all(BATCH_SLICES <= make().batching.max_batch_size for make in SPECS.values())
