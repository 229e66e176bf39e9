"""Segmentation jobs: upload a CT volume (or a zip of a DICOM series), get a job; the worker writes
mask, summary and preview."""

from __future__ import annotations

from typing import Any

from fastapi import Request, status

from core.capabilities import SEGMENTATION
from gateway.api.forms import form_body, read_upload
from gateway.api.responses import JOB_ANSWER_RESPONSES, job_answer
from gateway.capabilities import capability_router, chosen_model, require_available
from gateway.deps import CurrentKey, IdempotencyKey, Store
from gateway.pacs_sources import check_configured, is_json, read_json, source_input
from gateway.problems import problem_responses
from gateway.schemas import JobPublic, SegmentationJobCreate, SegmentationSourceJobCreate
from gateway.submission import JobRequest, check_idempotency_key, job_request, submit
from gateway.uploads import max_upload_bytes, save_volume

router = capability_router(SEGMENTATION, "segmentation")


@router.post(
    "/jobs", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic,
    summary="Segment a 3D CT volume (multipart upload or raw body)",
    description=(
        "Streams the upload to the artifact store (413 past `MEDSTACK_MAX_UPLOAD_MB`), judges its format from its "
        "bytes (415 otherwise), checks a zip member by member, and queues a job. `202` with the job; repeating a "
        "request with the same `Idempotency-Key` answers `200` with the same job (`Idempotent-Replayed: true`), "
        "or `409` if the request differs. For a raw body, pass the options as query parameters. A JSON body names "
        "a series on a configured DICOMweb server instead (`source`); the worker fetches it by WADO-RS and stores "
        "the DICOM SEG back by STOW-RS (docs/pacs.md)."
    ),
    dependencies=[require_available(SEGMENTATION)],
    openapi_extra=form_body(
        SegmentationJobCreate, "3D CT as NIfTI (.nii/.nii.gz), NRRD, MetaImage (.mha), or a zip of a DICOM series; "
        "the format is judged from the content", {"file": "(ct.nii.gz)", "model": "reference_hutissue", "priority": 5},
        raw_example="(the bytes of ct.nii.gz; options as query parameters)", json_options=SegmentationSourceJobCreate),
    responses={
        **JOB_ANSWER_RESPONSES,
        **problem_responses(400, 409, 413, 415, 422, 503, d503="No segmentation model is built, or the broker is down"),
    },
)
async def create_job(request: Request, principal: CurrentKey, store: Store,
                     idempotency_key: IdempotencyKey = None) -> Any:
    if is_json(request):  # the series is on a DICOMweb server: the worker fetches it
        source_form = await read_json(request, SegmentationSourceJobCreate)
        check_configured(source_form.source, source_form.destination)
        spec = _job(source_form, idempotency_key, source=source_form.source.model_dump())
        submitted = await submit(request, principal, spec, store, lambda d: source_input(source_form.source, d))
        return job_answer(submitted, store)
    async with read_upload(request, SegmentationJobCreate, max_upload_bytes(), raw_body=True) as upload:
        check_configured(None, upload.options.destination)
        spec = _job(upload.options, idempotency_key)
        submitted = await submit(request, principal, spec, store, lambda d: save_volume(upload.file, d))
    return job_answer(submitted, store)


def _job(form: SegmentationJobCreate, idempotency_key: str | None, source: dict[str, str] | None = None) -> JobRequest:
    params: dict[str, Any] = {"series_uid": source["series_uid"] if source else form.series_uid,
                              "largest_component": form.largest_component}
    # only when set: ordinary requests keep their params (and digests)
    if form.allow_modality_mismatch:
        params["allow_modality_mismatch"] = True
    if source:
        params["source"] = source
    if form.destination:
        params["destination"] = form.destination
    return job_request(SEGMENTATION, params, model=chosen_model(SEGMENTATION, form.model), priority=form.priority,
                       idempotency_key=check_idempotency_key(idempotency_key, form.transaction_id))
