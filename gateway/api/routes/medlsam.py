"""MedLSAM jobs: localize structures with MedLAM templates, then segment inside each box (needs the
models ``localization_medlam`` and ``segmentation_medlsam`` and ``workers.localization_tasks``; 503 naming what
is missing until then). A JSON body names a series on a configured DICOMweb server instead of an upload
(docs/pacs.md): the worker fetches it and stores the DICOM SEG back."""

from __future__ import annotations

from typing import Any

from fastapi import Request, status
from sqlalchemy.orm import Session

from core.capabilities import MEDLSAM
from gateway.api.forms import form_body, read_upload, split_csv
from gateway.api.responses import job_answer
from gateway.capabilities import capability_router, require_available
from gateway.deps import CurrentKey, DbSession, IdempotencyKey, Principal, Store
from gateway.pacs_sources import check_configured, is_json, read_json, source_input
from gateway.problems import problem_responses
from gateway.records import check_templates
from gateway.schemas import JobPublic, MedlsamJobCreate, MedlsamSourceJobCreate
from gateway.submission import JobRequest, check_idempotency_key, job_request, submit
from gateway.uploads import max_upload_bytes, save_volume

router = capability_router(MEDLSAM, "medlsam")


@router.post(
    "/jobs", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic,
    summary="Localize and segment structures (MedLSAM; needs segmentation_medlsam)",
    description="Result: per structure a box (as localization jobs) and a mask in the input's geometry.",
    dependencies=[require_available(MEDLSAM)],
    openapi_extra=form_body(MedlsamJobCreate, "3D volume: NIfTI, NRRD, MetaImage or a zip of a DICOM series",
                            {"file": "(ct.nii.gz)", "structures": "liver,spleen", "template_ids": "6a1d2c3b-…"},
                            json_options=MedlsamSourceJobCreate),
    responses=problem_responses(400, 404, 409, 413, 415, 422, 503),
)
async def create_job(request: Request, principal: CurrentKey, store: Store, db: DbSession,
                     idempotency_key: IdempotencyKey = None) -> Any:
    if is_json(request):  # the series is on a DICOMweb server: the worker fetches it
        source_form = await read_json(request, MedlsamSourceJobCreate)
        check_configured(source_form.source, None)
        spec = _job(source_form, principal, db, idempotency_key, source_form.source.model_dump())
        submitted = await submit(request, principal, spec, store, lambda d: source_input(source_form.source, d))
        return job_answer(submitted, store)
    async with read_upload(request, MedlsamJobCreate, max_upload_bytes()) as upload:
        spec = _job(upload.options, principal, db, idempotency_key)
        submitted = await submit(request, principal, spec, store, lambda d: save_volume(upload.file, d))
    return job_answer(submitted, store)


def _job(form: MedlsamJobCreate, principal: Principal, db: Session, idempotency_key: str | None,
         source: dict[str, str] | None = None) -> JobRequest:
    params: dict[str, Any] = {"structures": split_csv(form.structures), "template_ids": split_csv(form.template_ids),
                              "output_dicom_seg": form.output_dicom_seg or source is not None}
    if form.allow_modality_mismatch:
        params["allow_modality_mismatch"] = True
    if source:  # the SEG goes back to the PACS, so it is always written
        params |= {"source": source, "series_uid": source["series_uid"]}
    check_templates(db, principal, params["template_ids"], params["structures"])
    return job_request(MEDLSAM, params, priority=form.priority,
                       idempotency_key=check_idempotency_key(idempotency_key, form.transaction_id))
