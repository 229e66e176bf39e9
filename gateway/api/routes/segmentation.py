"""Segmentation jobs: upload a CT volume (or a zip of a DICOM series), get a job; the worker writes
mask, summary and preview."""

from __future__ import annotations

from typing import Any

from fastapi import Request, status

from core.capabilities import SEGMENTATION
from gateway.api.forms import form_body, read_upload
from gateway.api.responses import job_answer
from gateway.capabilities import capability_router, chosen_model, require_available
from gateway.deps import CurrentKey, IdempotencyKey, Store
from gateway.problems import problem_responses
from gateway.schemas import JobPublic, SegmentationJobCreate
from gateway.submission import check_idempotency_key, job_request, submit
from gateway.uploads import max_upload_bytes, save_volume

router = capability_router(SEGMENTATION, "segmentation")


@router.post(
    "/jobs", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic,
    summary="Segment a 3D CT volume (multipart upload or raw body)",
    description=(
        "Streams the upload to the artifact store (413 past `MEDSTACK_MAX_UPLOAD_MB`), judges its format from its "
        "bytes (415 otherwise), checks a zip member by member, and queues a job. `202` with the job; repeating a "
        "request with the same `Idempotency-Key` answers `200` with the same job (`Idempotent-Replayed: true`), "
        "or `409` if the request differs. For a raw body, pass the options as query parameters."
    ),
    dependencies=[require_available(SEGMENTATION)],
    openapi_extra=form_body(
        SegmentationJobCreate, "3D CT as NIfTI (.nii/.nii.gz), NRRD, MetaImage (.mha), or a zip of a DICOM series; "
        "the format is judged from the content", {"file": "(ct.nii.gz)", "model": "reference_hutissue", "priority": 5},
        raw_example="(the bytes of ct.nii.gz; options as query parameters)"),
    responses={
        200: {"description": "Replay of an earlier request with the same Idempotency-Key: the same job",
              "model": JobPublic},
        202: {"description": "Job accepted", "headers": {"Location": {"schema": {"type": "string"}}}},
        **problem_responses(400, 409, 413, 415, 422, 503, d503="No segmentation model is built, or the broker is down"),
    },
)
async def create_job(request: Request, principal: CurrentKey, store: Store,
                     idempotency_key: IdempotencyKey = None) -> Any:
    async with read_upload(request, SegmentationJobCreate, max_upload_bytes(), raw_body=True) as upload:
        form = upload.options
        params = {"series_uid": form.series_uid, "largest_component": form.largest_component}
        if form.allow_modality_mismatch:  # only when set: ordinary requests keep their params (and digests)
            params["allow_modality_mismatch"] = True
        spec = job_request(SEGMENTATION, params,
                           model=chosen_model(SEGMENTATION, form.model), priority=form.priority,
                           idempotency_key=check_idempotency_key(idempotency_key, form.transaction_id))
        submitted = await submit(request, principal, spec, store, lambda d: save_volume(upload.file, d))
    return job_answer(submitted, store)
