"""MedLSAM jobs: localize structures with MedLAM templates, then segment inside each box (needs the
models ``localization_medlam`` and ``segmentation_medlsam`` and ``workers.localization_tasks``; 503 naming what
is missing until then)."""

from __future__ import annotations

from typing import Any

from fastapi import Request, status

from core.capabilities import MEDLSAM
from gateway.api.forms import form_body, read_upload, split_csv
from gateway.api.responses import job_answer
from gateway.capabilities import capability_router, require_available
from gateway.deps import CurrentKey, DbSession, IdempotencyKey, Store
from gateway.problems import problem_responses
from gateway.records import check_templates
from gateway.schemas import JobPublic, MedlsamJobCreate
from gateway.submission import check_idempotency_key, job_request, submit
from gateway.uploads import max_upload_bytes, save_volume

router = capability_router(MEDLSAM, "medlsam")


@router.post(
    "/jobs", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic,
    summary="Localize and segment structures (MedLSAM; needs segmentation_medlsam)",
    description="Result: per structure a box (as localization jobs) and a mask in the input's geometry.",
    dependencies=[require_available(MEDLSAM)],
    openapi_extra=form_body(MedlsamJobCreate, "3D volume: NIfTI, NRRD, MetaImage or a zip of a DICOM series",
                            {"file": "(ct.nii.gz)", "structures": "liver,spleen", "template_ids": "6a1d2c3b-…"}),
    responses=problem_responses(400, 404, 409, 413, 415, 422, 503),
)
async def create_job(request: Request, principal: CurrentKey, store: Store, db: DbSession,
                     idempotency_key: IdempotencyKey = None) -> Any:
    async with read_upload(request, MedlsamJobCreate, max_upload_bytes()) as upload:
        form = upload.options
        params = {"structures": split_csv(form.structures), "template_ids": split_csv(form.template_ids),
                  "output_dicom_seg": form.output_dicom_seg}
        if form.allow_modality_mismatch:
            params["allow_modality_mismatch"] = True
        check_templates(db, principal, params["template_ids"], params["structures"])
        spec = job_request(MEDLSAM, params, priority=form.priority,
                           idempotency_key=check_idempotency_key(idempotency_key, form.transaction_id))
        submitted = await submit(request, principal, spec, store, lambda d: save_volume(upload.file, d))
    return job_answer(submitted, store)
