"""UM-CAM jobs through gateway → Celery → Triton on the held-out Colin27 head (issue #20, "Done when").

The head was never seen in training (docs/umcam.md); its brain-extracted copy ``ch2bet`` (> 0) is
the reference. The brain-extraction job must give a mask on the input's grid, equal voxel for voxel
to the same job run in-process with ONNX Runtime, with Dice ≥ ``MIN_DICE`` against the reference;
the pseudo-label job must give UM-CAM maps and GSE pseudo-labels on the grid, background in every
slice labelled absent; bad inputs end in typed errors.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import SimpleITK as sitk

from export.manifest import latest_manifest
from services.common.volume import Volume, read_volume, write_volume
from services.umcam.job import run_brain_extraction
from tests.conftest import create_api_key, write_small_ct
from tests.ct_cases import wait_for_job

pytestmark = pytest.mark.integration
# Dice on this head with the committed weights (umcam_unet = unet_weak_s0, umcam_cam = classifier),
# measured by the same job in-process: U-Net 0.818, pseudo-label job 0.813; the margins allow a
# retrained checkpoint of the same recipe to land a little lower without hiding a broken one
MIN_DICE = 0.75
MIN_PSEUDO_DICE = 0.70


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Volume, np.ndarray]:
    """(upload, image, reference brain mask) of the held-out head."""
    from services.common.datasets import load_brain_head

    colin = load_brain_head("colin27_head")
    path = write_volume(colin.image, tmp_path_factory.mktemp("colin27") / "ch2.nii.gz")
    return path, colin.image, colin.labels.array > 0


@pytest.fixture(scope="module")
def key(stack) -> str:
    return create_api_key(stack, ["segmentation", "jobs"], name="umcam")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.sum(a & b) / (np.sum(a) + np.sum(b)))


def _download(client, job: dict, name: str, folder: Path) -> Path:
    path = folder / name
    path.write_bytes(client.get(job["links"][name]).content)
    return path


def _submit(client, route: str, upload: Path, data: dict | None = None) -> dict:
    with open(upload, "rb") as f:
        response = client.post(route, files={"file": (upload.name, f)}, data=data or {})
    assert response.status_code == 202, response.text
    return wait_for_job(client, response.json()["id"], timeout_s=600)


def _onnx(model_repository: Path, model: str):
    served = latest_manifest(model_repository / model)
    session = ort.InferenceSession(str(model_repository / model / str(served["version"]) / "model.onnx"))
    return served, session


def test_brain_extraction_on_the_held_out_head(stack, key, head, model_repository, tmp_path) -> None:
    upload, image, reference = head
    with stack.client(key) as client:
        job = _submit(client, "/v1/umcam/jobs", upload)
        assert job["state"] == "succeeded", job
        assert job["kind"] == "umcam" and job["model"] == "umcam_unet"
        mask = read_volume(_download(client, job, "mask.nii.gz", tmp_path))
        summary = client.get(job["links"]["summary.json"]).json()
        assert client.get(job["links"]["preview.png"]).content[:4] == b"\x89PNG"

    # geometry: the mask overlays the input exactly
    assert mask.same_grid(image) and mask.array.dtype == np.uint8
    served, session = _onnx(model_repository, "umcam_unet")
    assert summary["model"] == {"name": "umcam_unet", "version": str(served["version"]), "sha256": served["sha256"]}
    brain = summary["structures"][0]
    assert brain["name"] == "brain" and brain["voxels"] == int(mask.array.sum())
    assert summary["input_check"]["passed"] and summary["input_check"]["expected_modality"] == "MR"

    # voxel for voxel the same job in-process with ONNX Runtime
    expected = run_brain_extraction(upload, tmp_path / "reference", summary["model"],
                                    lambda x: session.run(["logits"], {"image": x})[0])
    assert np.array_equal(read_volume(tmp_path / "reference" / "mask.nii.gz").array, mask.array)
    assert expected["structures"] == summary["structures"]

    # and it finds the brain of a head it never saw
    score = dice(mask.array > 0, reference)
    print(f"umcam_unet Dice on Colin27: {score:.4f}")
    assert score >= MIN_DICE, f"Dice {score:.3f} against ch2bet"


def _slice_labels(reference: np.ndarray, image: Volume) -> list[int]:
    """What a user would tick: brain present where its area reaches the family's training threshold
    (200 mm², services/umcam/data.py); slivers below it are left at 0."""
    from services.umcam.data import MIN_AREA_PX
    from services.umcam.grid import PIXEL_MM

    area_mm2 = reference.sum(axis=(1, 2)) * image.spacing[0] * image.spacing[1]
    return [int(a >= MIN_AREA_PX * PIXEL_MM**2) for a in area_mm2]


def test_pseudo_labels_end_to_end(stack, key, head, tmp_path) -> None:
    upload, image, reference = head
    labels = _slice_labels(reference, image)
    with stack.client(key) as client:
        job = _submit(client, "/v1/umcam/pseudo-labels", upload, {"slice_labels": json.dumps(labels)})
        assert job["state"] == "succeeded", job
        assert job["kind"] == "umcam_pseudo_labels" and job["model"] == "umcam_cam"
        umcam = read_volume(_download(client, job, "umcam.nii.gz", tmp_path))
        pseudo = read_volume(_download(client, job, "mask.nii.gz", tmp_path))
        summary = client.get(job["links"]["summary.json"]).json()

    assert umcam.same_grid(image) and pseudo.same_grid(image)
    assert umcam.array.dtype == np.float32 and 0 <= umcam.array.min() and umcam.array.max() <= 1
    absent = np.flatnonzero(np.asarray(labels) == 0)
    assert not pseudo.array[absent].any(), "a slice labelled absent got a pseudo-label"
    assert [s["label"] for s in summary["slices"]] == labels
    assert all(0 <= s["presence"] <= 1 for s in summary["slices"])
    agreement = summary["classifier_vs_labels"]
    print(f"umcam_cam presence vs labels on Colin27: accuracy {agreement['accuracy']}")
    score = dice(pseudo.array > 0, reference)
    print(f"GSE pseudo-label Dice on Colin27: {score:.4f}")
    assert score >= MIN_PSEUDO_DICE


def test_pseudo_label_requests_that_cannot_be_done_are_422(stack, key, head) -> None:
    upload, image, _ = head
    count = image.shape[0]
    cases = [
        ({}, "validation-error", "slice_labels"),
        ({"slice_labels": json.dumps([0] * count)}, "validation-error", "no slice is labelled 1"),
        ({"slice_labels": "[0, 1, 2]"}, "validation-error", "only 0"),
        ({"slice_labels": json.dumps([1] * (count - 1))}, "slice-labels-mismatch", f"{count} slices"),
    ]
    with stack.client(key) as client:
        for data, kind, says in cases:
            with open(upload, "rb") as f:
                response = client.post("/v1/umcam/pseudo-labels", files={"file": ("t1.nii.gz", f)}, data=data)
            assert response.status_code == 422, response.text
            assert response.headers["content-type"].startswith("application/problem+json")
            problem = response.json()
            assert problem["type"].endswith("/" + kind) and says in problem["detail"], problem
        assert problem["slice_count"] == count and problem["labels"] == count - 1


def _series_zip(volume: Volume, folder: Path, modality: str) -> Path:
    """``volume`` as a zipped DICOM series whose Modality is ``modality``."""
    import pydicom
    from pydicom.uid import MRImageStorage

    from services.common.dicom_series import write_ct_series, zip_files

    paths = write_ct_series(volume, folder / "series")
    if modality == "MR":
        for path in paths:
            ds = pydicom.dcmread(path)
            ds.Modality, ds.SOPClassUID, ds.file_meta.MediaStorageSOPClassUID = "MR", MRImageStorage, MRImageStorage
            del ds.RescaleType
            ds.save_as(path, enforce_file_format=True)
    return zip_files(paths, folder / "series.zip")


def test_bad_inputs_end_in_typed_errors(stack, key, head, tmp_path) -> None:
    _, image, _ = head
    flat = tmp_path / "slice.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(image.array[90]), str(flat))
    ct = write_small_ct(tmp_path / "ct.nii.gz")
    ct_series = _series_zip(image, tmp_path / "ct-series", "CT")
    with stack.client(key) as client:
        for upload, kind in ((flat, "invalid-volume"), (ct, "not-mr"), (ct_series, "modality-mismatch")):
            job = _submit(client, "/v1/umcam/jobs", upload)
            assert (job["state"], job["error"]["type"]) == ("failed", kind), job
        labels = json.dumps([1] * (image.shape[0] - 2))  # a DICOM zip is counted by the worker
        job = _submit(client, "/v1/umcam/pseudo-labels", ct_series, {"slice_labels": labels,
                                                                    "allow_modality_mismatch": "true"})
        assert (job["state"], job["error"]["type"]) == ("failed", "slice-labels-mismatch"), job
        assert f"{image.shape[0]} slices" in job["error"]["detail"]

        overridden = _submit(client, "/v1/umcam/jobs", ct, {"allow_modality_mismatch": "true"})
        assert overridden["state"] == "succeeded", overridden
        check = overridden["result"]["input_check"]
        assert check["override"] and not check["passed"] and check["warnings"]


def test_dicom_mr_series_gets_a_dicom_seg(stack, key, head, tmp_path) -> None:
    _, image, reference = head
    series = _series_zip(image, tmp_path, "MR")
    with stack.client(key) as client:
        job = _submit(client, "/v1/umcam/jobs", series)
        assert job["state"] == "succeeded", job
        assert "seg.dcm" in job["links"]
        mask = read_volume(_download(client, job, "mask.nii.gz", tmp_path))
        seg = client.get(job["links"]["seg.dcm"]).content
    assert job["result"]["input"]["format"] == "dicom" and job["result"]["input_check"]["method"] == "dicom-modality"
    assert mask.shape == image.shape and dice(mask.array > 0, reference) >= MIN_DICE
    import io

    import pydicom

    ds = pydicom.dcmread(io.BytesIO(seg))
    assert ds.Modality == "SEG" and ds.SegmentSequence[0].SegmentLabel == "brain"
