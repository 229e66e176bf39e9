"""MedLSAM jobs: localize structures with MedLAM templates, then segment inside each box (needs the
models ``localization_medlam`` and ``segmentation_medlsam`` and ``workers.localization_tasks``; 503 naming what
is missing until then)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, status
from pydantic import BaseModel, ConfigDict, Field

from core.keys import Scope
from core.settings import settings
from gateway.api.forms import form_body, read_form
from gateway.api.responses import job_answer
from gateway.api.routes.localization import check_templates, split_csv
from gateway.auth import require
from gateway.capabilities import LOCALIZATION, MEDLSAM, require_available
from gateway.deps import CurrentKey, DbSession, IdempotencyKey, Store
from gateway.problems import problem_responses
from gateway.schemas import JobPublic
from gateway.submission import JobRequest, check_idempotency_key, submit
from gateway.uploads import save_volume

router = APIRouter(
    prefix="/v1/medlsam", tags=["medlsam"], dependencies=[require(Scope.SEGMENTATION)],
    responses=problem_responses(401, 403, 429),
)


class MedlsamJobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    structures: str = Field(min_length=1, max_length=2000, description="comma-separated structure names",
                            examples=["liver,spleen"])
    template_ids: str = Field(min_length=1, max_length=4000, description="comma-separated localization templates",
                              examples=["6a1d2c3b-0e9f-4a8b-9c7d-5e4f3a2b1c0d"])
    output_dicom_seg: bool = Field(False, description="also write a DICOM SEG (input must be a DICOM series)")
    priority: int = Field(5, ge=0, le=9)
    transaction_id: str | None = Field(None, max_length=100)


@router.post(
    "/jobs", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic,
    summary="Localize and segment structures (MedLSAM; needs segmentation_medlsam)",
    description="Result: per structure a box (as localization jobs) and a mask in the input's geometry.",
    dependencies=[require_available(LOCALIZATION), require_available(MEDLSAM)],
    openapi_extra=form_body(MedlsamJobCreate, "3D volume: NIfTI, NRRD, MetaImage or a zip of a DICOM series",
                            {"file": "(ct.nii.gz)", "structures": "liver,spleen", "template_ids": "6a1d2c3b-…"}),
    responses=problem_responses(400, 404, 409, 413, 415, 422, 503),
)
async def create_job(request: Request, principal: CurrentKey, store: Store, db: DbSession,
                     idempotency_key: IdempotencyKey = None) -> Any:
    upload, form, raw = await read_form(request, MedlsamJobCreate, settings.max_upload_mb << 20)
    try:
        params = {"structures": split_csv(form.structures), "template_ids": split_csv(form.template_ids),
                  "output_dicom_seg": form.output_dicom_seg}
        check_templates(db, principal, params["template_ids"], params["structures"])
        spec = JobRequest("medlsam", MEDLSAM.model or "", form.priority, params,
                          check_idempotency_key(idempotency_key, form.transaction_id),
                          MEDLSAM.task or "", MEDLSAM.queue)
        submitted = await submit(request, principal, spec, store, lambda d: save_volume(upload, d))
    finally:
        await raw.close()
    return job_answer(submitted, store)
