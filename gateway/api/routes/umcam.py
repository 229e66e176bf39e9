"""UM-CAM jobs (issue #20): brain extraction on a T1 MR with the U-Net trained on UM-CAM + GSE
pseudo-labels, and the pseudo-label workflow itself (a volume + slice-level labels → UM-CAM map and
GSE pseudo-label mask).

Each needs its own Triton model (``umcam_unet``, ``umcam_cam``) and ``workers.umcam_tasks``; 503
naming what is missing until then. Both use the ``segmentation`` scope (they return masks).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request, status
from starlette.concurrency import run_in_threadpool

from core.capabilities import UMCAM, UMCAM_PSEUDO_LABELS
from gateway.api.forms import form_body, read_upload
from gateway.api.responses import JOB_ANSWER_RESPONSES, job_answer
from gateway.capabilities import capability_router, require_available
from gateway.deps import CurrentKey, IdempotencyKey, Store
from gateway.problems import Problem, problem_responses
from gateway.schemas import JobPublic, UmcamJobCreate, UmcamPseudoLabelsCreate
from gateway.submission import check_idempotency_key, job_request, submit
from gateway.uploads import SavedInput, max_upload_bytes, save_volume
from services.umcam.slice_labels import MISMATCH_KIND, check_slice_count, header_slice_count, parse_slice_labels

router = capability_router(UMCAM, "umcam")

MR_VOLUME = "3D T1 MR head: NIfTI (.nii/.nii.gz), NRRD, MetaImage (.mha) or a zip of a DICOM MR series"


@router.post(
    "/jobs", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic,
    summary="Brain extraction on a 3D T1 MR (U-Net trained on UM-CAM pseudo-labels; needs umcam_unet)",
    description=(
        "Queues a job that runs the U-Net slice by slice (axial slices, batched through Triton) and writes the "
        "brain mask on the input's grid (`mask.nii.gz`), `summary.json` (brain volume in mL), `preview.png` and, "
        "for DICOM input, `seg.dcm`. An input that is not an MR fails the job with `modality-mismatch` (DICOM) "
        "or `not-mr` (a file with a CT's air), unless `allow_modality_mismatch=true`."
    ),
    dependencies=[require_available(UMCAM)],
    openapi_extra=form_body(UmcamJobCreate, MR_VOLUME, {"file": "(t1.nii.gz)", "priority": 5},
                            raw_example="(the bytes of t1.nii.gz; options as query parameters)"),
    responses={
        **JOB_ANSWER_RESPONSES,
        **problem_responses(400, 409, 413, 415, 422, 503, d503="umcam_unet is not built, or the broker is down"),
    },
)
async def create_job(request: Request, principal: CurrentKey, store: Store,
                     idempotency_key: IdempotencyKey = None) -> Any:
    async with read_upload(request, UmcamJobCreate, max_upload_bytes(), raw_body=True) as upload:
        form = upload.options
        params: dict[str, Any] = {"series_uid": form.series_uid, "largest_component": form.largest_component}
        if form.allow_modality_mismatch:
            params["allow_modality_mismatch"] = True
        spec = job_request(UMCAM, params, priority=form.priority,
                           idempotency_key=check_idempotency_key(idempotency_key, form.transaction_id))
        submitted = await submit(request, principal, spec, store, lambda d: save_volume(upload.file, d))
    return job_answer(submitted, store)


def _check_label_count(path: Path, labels: list[int]) -> None:
    """422 when the file's header declares another slice count; a DICOM zip is counted by the worker
    (the same check, a failed job of the same type)."""
    count = header_slice_count(path) if not path.name.endswith(".zip") else None
    problem = check_slice_count(labels, count) if count is not None else None
    if problem is not None:
        raise Problem(422, "Slice labels do not fit the volume", problem, kind=MISMATCH_KIND,
                      slice_count=count, labels=len(labels))


@router.post(
    "/pseudo-labels", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic,
    summary="UM-CAM maps and GSE pseudo-labels from slice-level labels (needs umcam_cam)",
    description=(
        "Upload a 3D T1 MR and `slice_labels`, a JSON list of 0/1 with one entry per slice along the stored slice "
        "axis (1 = brain present). The job computes the classifier's presence probability and its CAMs at three "
        "resolutions for every slice, fuses them by their uncertainty (UM-CAM), and grows a pseudo-label by "
        "geodesic seed expansion in the slices labelled 1 (slices labelled 0 are background). Artifacts: "
        "`umcam.nii.gz` (the fused map, float in [0, 1], on the input grid), `mask.nii.gz` (the pseudo-label), "
        "`summary.json` (per slice: your label and the classifier's presence probability), `preview.png`. "
        "422 `validation-error` for labels that are missing, not 0/1, or all 0; 422 `slice-labels-mismatch` when "
        "their count differs from the volume's slices (for a DICOM zip the job fails with that type). "
        "Training a segmenter from the pseudo-labels is not offered as a job."
    ),
    dependencies=[require_available(UMCAM_PSEUDO_LABELS)],
    openapi_extra=form_body(UmcamPseudoLabelsCreate, MR_VOLUME,
                            {"file": "(t1.nii.gz)", "slice_labels": "[0, 0, 1, 1, 1, 0]"}),
    responses=problem_responses(400, 409, 413, 415, 422, 503),
)
async def create_pseudo_labels(request: Request, principal: CurrentKey, store: Store,
                               idempotency_key: IdempotencyKey = None) -> Any:
    async with read_upload(request, UmcamPseudoLabelsCreate, max_upload_bytes()) as upload:
        form = upload.options
        labels = parse_slice_labels(form.slice_labels)
        params: dict[str, Any] = {"slice_labels": labels, "series_uid": form.series_uid}
        if form.allow_modality_mismatch:
            params["allow_modality_mismatch"] = True

        async def save(directory: Path) -> SavedInput:
            saved = await save_volume(upload.file, directory)
            await run_in_threadpool(_check_label_count, directory / saved.name, labels)
            return saved

        spec = job_request(UMCAM_PSEUDO_LABELS, params, priority=form.priority,
                           idempotency_key=check_idempotency_key(idempotency_key, form.transaction_id))
        submitted = await submit(request, principal, spec, store, save)
    return job_answer(submitted, store)
