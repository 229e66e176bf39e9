"""Few-shot localization (MedLAM): templates (a volume + six extreme points per structure) and
localization jobs (a query volume + structure names + template ids → 3D boxes).

Creating templates and localizing need the model ``localization_medlam`` and the worker tasks in
``workers.localization_tasks``; until both exist those routes answer 503 naming what is missing.
Listing, reading and deleting templates work regardless.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import Path as PathParam
from fastapi import Request, Response, status

from core.capabilities import LOCALIZATION, LOCALIZATION_TEMPLATES
from gateway import records
from gateway.api.forms import form_body, read_upload, split_csv
from gateway.api.responses import job_answer
from gateway.capabilities import capability_router, require_available
from gateway.deps import CurrentKey, DbSession, IdempotencyKey, Store
from gateway.problems import problem_responses
from gateway.schemas import JobPublic, LocalizationJobCreate, TemplateCreate, TemplatePublic, TemplatesPublic
from gateway.submission import check_idempotency_key, job_request, submit
from gateway.uploads import max_upload_bytes, save_volume

router = capability_router(LOCALIZATION, "localization")

TemplateId = Annotated[str, PathParam(max_length=64, examples=["6a1d2c3b-0e9f-4a8b-9c7d-5e4f3a2b1c0d"])]
VOLUME = "3D volume: NIfTI, NRRD, MetaImage or a zip of a DICOM series"


@router.get("/templates", summary="Templates of this key (all for admin)")
def list_templates(db: DbSession, principal: CurrentKey) -> TemplatesPublic:
    return TemplatesPublic(data=[TemplatePublic.from_record(t) for t in records.list_templates(db, principal)])


@router.get("/templates/{template_id}", summary="One template", responses=problem_responses(404))
def get_template(template_id: TemplateId, db: DbSession, principal: CurrentKey) -> TemplatePublic:
    return TemplatePublic.from_record(records.visible_template(db, template_id, principal))


@router.delete("/templates/{template_id}", summary="Delete a template", status_code=status.HTTP_204_NO_CONTENT,
               response_class=Response, responses=problem_responses(404))
def delete_template(template_id: TemplateId, db: DbSession, principal: CurrentKey) -> Response:
    records.delete_template(db, template_id, principal)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/templates", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic,
    summary="Register a template: a volume plus six extreme points per structure (needs localization_medlam)",
    description="Queues a job that embeds the template with the model; the template appears in the list when "
                "the job succeeds.",
    dependencies=[require_available(LOCALIZATION_TEMPLATES)],
    openapi_extra=form_body(TemplateCreate, VOLUME, {"file": "(template_ct.nii.gz)", "name": "liver-template-01",
                                                     "points": '{"liver": [[120, 88, 30], "…"]}'}),
    responses=problem_responses(400, 409, 413, 415, 422, 503),
)
async def create_template(request: Request, principal: CurrentKey, store: Store,
                          idempotency_key: IdempotencyKey = None) -> Any:
    async with read_upload(request, TemplateCreate, max_upload_bytes()) as upload:
        form = upload.options
        spec = job_request(LOCALIZATION_TEMPLATES, {"name": form.name, "points": json.loads(form.points)},
                           idempotency_key=check_idempotency_key(idempotency_key))
        submitted = await submit(request, principal, spec, store, lambda d: save_volume(upload.file, d))
    return job_answer(submitted, store)


@router.post(
    "/jobs", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic,
    summary="Localize structures in a query volume against templates (needs localization_medlam)",
    description="Result: per structure a 3D box in voxel indices and physical mm, and per-slice 2D boxes.",
    dependencies=[require_available(LOCALIZATION)],
    openapi_extra=form_body(LocalizationJobCreate, VOLUME, {
        "file": "(query_ct.nii.gz)", "structures": "liver,spleen", "template_ids": "6a1d2c3b-…"}),
    responses=problem_responses(400, 404, 409, 413, 415, 422, 503),
)
async def localize(request: Request, principal: CurrentKey, store: Store, db: DbSession,
                   idempotency_key: IdempotencyKey = None) -> Any:
    async with read_upload(request, LocalizationJobCreate, max_upload_bytes()) as upload:
        form = upload.options
        params = {"structures": split_csv(form.structures), "template_ids": split_csv(form.template_ids)}
        if form.allow_modality_mismatch:
            params["allow_modality_mismatch"] = True
        records.check_templates(db, principal, params["template_ids"], params["structures"])
        spec = job_request(LOCALIZATION, params, priority=form.priority,
                           idempotency_key=check_idempotency_key(idempotency_key, form.transaction_id))
        submitted = await submit(request, principal, spec, store, lambda d: save_volume(upload.file, d))
    return job_answer(submitted, store)
