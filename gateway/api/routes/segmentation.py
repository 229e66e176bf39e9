"""Segmentation jobs: upload a CT volume (or a zip of a DICOM series), get a job; the worker writes
mask, summary and preview."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, status
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.keys import Scope
from core.settings import settings
from gateway.api.forms import validation_problem
from gateway.api.responses import job_answer
from gateway.auth import require
from gateway.capabilities import SEGMENTATION, model_missing
from gateway.catalog import segmentation_models
from gateway.deps import CurrentKey, IdempotencyKey, Store
from gateway.problems import Problem, problem_responses
from gateway.schemas import JobPublic
from gateway.submission import JobRequest, check_idempotency_key, submit
from gateway.uploads import RAW_MEDIA_TYPES, check_content_length, limited, media_type, read_multipart, save_volume

router = APIRouter(
    prefix="/v1/segmentation", tags=["segmentation"], dependencies=[require(Scope.SEGMENTATION)],
    responses=problem_responses(401, 403, 429),
)


class SegmentationOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, max_length=64)
    priority: int = Field(5, ge=0, le=9)
    transaction_id: str | None = Field(None, max_length=100)
    series_uid: str | None = Field(None, max_length=64, pattern=r"^[0-9][0-9.]*$")
    largest_component: bool = False


_FORM_SCHEMA = {
    "type": "object",
    "required": ["file"],
    "properties": {
        "file": {"type": "string", "format": "binary",
                 "description": "3D CT as NIfTI (.nii/.nii.gz), NRRD, MetaImage (.mha), or a zip of a DICOM series; "
                                "the format is judged from the content"},
        "model": {"type": "string", "maxLength": 64, "description": "served segmentation model; default: the best"},
        "priority": {"type": "integer", "minimum": 0, "maximum": 9, "default": 5,
                     "description": "0 (background) … 9 (most urgent)"},
        "transaction_id": {"type": "string", "maxLength": 100,
                           "description": "same role as the Idempotency-Key header"},
        "series_uid": {"type": "string", "maxLength": 64, "pattern": "^[0-9][0-9.]*$",
                       "description": "for a zip holding several series: the SeriesInstanceUID to segment"},
        "largest_component": {"type": "boolean", "default": False,
                               "description": "keep only the largest connected component of each structure"},
    },
    "additionalProperties": False,
}

_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": _FORM_SCHEMA,
                "encoding": {"file": {"contentType": "application/octet-stream"}},
                "example": {"file": "(ct.nii.gz)", "model": "reference_hutissue", "priority": 5},
            },
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "example": "(the bytes of ct.nii.gz; options as query parameters)",
            },
        },
    },
}


@router.post(
    "/jobs", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic,
    summary="Segment a 3D CT volume (multipart upload or raw body)",
    description=(
        "Streams the upload to the artifact store (413 past `MEDSTACK_MAX_UPLOAD_MB`), judges its format from its "
        "bytes (415 otherwise), checks a zip member by member, and queues a job. `202` with the job; repeating a "
        "request with the same `Idempotency-Key` answers `200` with the same job (`Idempotent-Replayed: true`), "
        "or `409` if the request differs. For a raw body, pass the options as query parameters."
    ),
    openapi_extra=_BODY,
    responses={
        200: {"description": "Replay of an earlier request with the same Idempotency-Key: the same job",
              "model": JobPublic},
        202: {"description": "Job accepted", "headers": {"Location": {"schema": {"type": "string"}}}},
        **problem_responses(400, 409, 413, 415, 422, 503, d503="No segmentation model is built, or the broker is down"),
    },
)
async def create_job(
    request: Request,
    principal: CurrentKey,
    store: Store,
    idempotency_key: IdempotencyKey = None,
    model: Annotated[str | None, Query(max_length=64, description="raw body: served model")] = None,
    priority: Annotated[int, Query(ge=0, le=9, description="raw body: 0 (background) … 9 (urgent)")] = 5,
    transaction_id: Annotated[str | None, Query(max_length=100, description="raw body: idempotency key")] = None,
    series_uid: Annotated[str | None, Query(max_length=64, pattern=r"^[0-9][0-9.]*$")] = None,
    largest_component: Annotated[bool, Query(description="raw body: largest component per structure")] = False,
) -> Any:
    available = segmentation_models()
    if not available:
        raise model_missing(settings.segmentation_models[0])
    max_bytes = settings.max_upload_mb << 20
    check_content_length(request, max_bytes)
    kind = media_type(request)
    options: dict[str, Any] = {"model": model, "priority": priority, "transaction_id": transaction_id,
                               "series_uid": series_uid, "largest_component": largest_component}
    form = None
    if kind == "multipart/form-data":
        form = await read_multipart(request, max_bytes)
        source = form.get("file")
        if source is None or isinstance(source, str):
            raise Problem(422, "Invalid request", "multipart body needs a file part named 'file'",
                          kind="validation-error")
        options |= {k: v for k, v in form.multi_items() if k != "file"}
    elif kind in RAW_MEDIA_TYPES:
        source = limited(request.stream(), max_bytes)
    else:
        raise Problem(415, "Unsupported media type", "send multipart/form-data (field 'file') or the volume as "
                      f"application/octet-stream, not {kind or 'no Content-Type'}", kind="unsupported-media-type")
    try:
        opts = _options(options)
        chosen = opts.model or available[0]
        if chosen not in available:
            raise Problem(422, "Unknown model", f"model {chosen!r} is not a served segmentation model; "
                          f"choose from {', '.join(available)}", kind="unknown-model")
        spec = JobRequest(
            kind="segmentation", model=chosen, priority=opts.priority,
            params={"series_uid": opts.series_uid, "largest_component": opts.largest_component},
            idempotency_key=check_idempotency_key(idempotency_key, opts.transaction_id),
            task=SEGMENTATION.task or "", queue=SEGMENTATION.queue,
        )
        submitted = await submit(request, principal, spec, store, lambda d: save_volume(source, d, "input", max_bytes))
    finally:
        if form is not None:
            await form.close()
    return job_answer(submitted, store)


def _options(values: dict[str, Any]) -> SegmentationOptions:
    try:
        return SegmentationOptions.model_validate(values)
    except ValidationError as error:
        raise validation_problem(error) from error

