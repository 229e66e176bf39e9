"""Few-shot localization (MedLAM): templates (a volume + six extreme points per structure) and
localization jobs (a query volume + structure names + template ids → 3D boxes).

Creating templates and localizing need the model ``localization_medlam`` and the worker tasks in
``workers.localization_tasks``; until both exist those routes answer 503 naming what is missing.
Listing, reading and deleting templates work regardless.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Request, Response, status
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import select

from core.db import Template
from core.keys import Scope
from core.settings import settings
from gateway.api.forms import form_body, read_form
from gateway.api.responses import job_answer
from gateway.auth import require
from gateway.capabilities import LOCALIZATION, TEMPLATES, require_available
from gateway.deps import CurrentKey, DbSession, IdempotencyKey, Store
from gateway.problems import Problem, problem_responses
from gateway.schemas import JobPublic, TemplatePublic, TemplatesPublic
from gateway.submission import JobRequest, check_idempotency_key, submit
from gateway.uploads import save_volume

router = APIRouter(
    prefix="/v1/localization", tags=["localization"], dependencies=[require(Scope.LOCALIZATION)],
    responses=problem_responses(401, 403, 429),
)

TemplateId = Annotated[str, PathParam(max_length=64, examples=["6a1d2c3b-0e9f-4a8b-9c7d-5e4f3a2b1c0d"])]


class TemplateCreate(BaseModel):
    """Form fields of a template; ``points`` is a JSON object: structure → six extreme points (voxel x, y, z)
    in the order left, right, anterior, posterior, inferior, superior."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128, examples=["liver-template-01"])
    points: str = Field(min_length=2, max_length=100_000, description="JSON: {structure: [[x, y, z] × 6]}",
                        examples=['{"liver": [[120, 88, 30], [210, 140, 31], [160, 60, 44], [170, 190, 40], '
                                  '[150, 120, 12], [165, 125, 71]]}'])

    @field_validator("points")
    @classmethod
    def _six_points_each(cls, value: str) -> str:
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError("points must be JSON") from error
        if not isinstance(parsed, dict) or not parsed:
            raise ValueError("points must map structure names to six [x, y, z] points")
        for structure, pts in parsed.items():
            ok = isinstance(pts, list) and len(pts) == 6 and all(
                isinstance(p, list) and len(p) == 3 and all(isinstance(c, int | float) for c in p) for p in pts)
            if not ok:
                raise ValueError(f"structure {structure!r} needs six [x, y, z] points")
        return value


class LocalizationJobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    structures: str = Field(min_length=1, max_length=2000, description="comma-separated structure names",
                            examples=["liver,spleen,left_kidney"])
    template_ids: str = Field(min_length=1, max_length=4000, description="comma-separated template ids (1–5 shot)",
                              examples=["6a1d2c3b-0e9f-4a8b-9c7d-5e4f3a2b1c0d"])
    priority: int = Field(5, ge=0, le=9)
    transaction_id: str | None = Field(None, max_length=100)


@router.get("/templates", summary="Templates of this key (all for admin)")
def list_templates(db: DbSession, principal: CurrentKey) -> TemplatesPublic:
    query = select(Template).order_by(Template.created_at.desc())
    if not principal.is_admin:
        query = query.where(Template.api_key_id == principal.id)
    return TemplatesPublic(data=[TemplatePublic.from_record(t) for t in db.scalars(query.limit(500))])


def _visible(db: DbSession, template_id: str, principal: Any) -> Template:
    template = db.get(Template, template_id)
    if template is None or not (principal.is_admin or template.api_key_id == principal.id):
        raise Problem(404, "Template not found", f"no template with id {template_id}", kind="template-not-found")
    return template


@router.get("/templates/{template_id}", summary="One template", responses=problem_responses(404))
def get_template(template_id: TemplateId, db: DbSession, principal: CurrentKey) -> TemplatePublic:
    return TemplatePublic.from_record(_visible(db, template_id, principal))


@router.delete("/templates/{template_id}", summary="Delete a template", status_code=status.HTTP_204_NO_CONTENT,
               response_class=Response, responses=problem_responses(404))
def delete_template(template_id: TemplateId, db: DbSession, principal: CurrentKey) -> Response:
    db.delete(_visible(db, template_id, principal))
    db.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


_VOLUME = "3D volume: NIfTI, NRRD, MetaImage or a zip of a DICOM series"


@router.post(
    "/templates", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic,
    summary="Register a template: a volume plus six extreme points per structure (needs localization_medlam)",
    description="Queues a job that embeds the template with the model; the template appears in the list when "
                "the job succeeds.",
    dependencies=[require_available(TEMPLATES)],
    openapi_extra=form_body(TemplateCreate, _VOLUME, {"file": "(template_ct.nii.gz)", "name": "liver-template-01",
                                                      "points": '{"liver": [[120, 88, 30], "…"]}'}),
    responses=problem_responses(400, 409, 413, 415, 422, 503),
)
async def create_template(request: Request, principal: CurrentKey, store: Store,
                          idempotency_key: IdempotencyKey = None) -> Any:
    upload, form, raw = await read_form(request, TemplateCreate, settings.max_upload_mb << 20)
    try:
        spec = JobRequest("localization_template", TEMPLATES.model or "", 5,
                          {"name": form.name, "points": json.loads(form.points)},
                          check_idempotency_key(idempotency_key), TEMPLATES.task or "", TEMPLATES.queue)
        submitted = await submit(request, principal, spec, store, lambda d: save_volume(upload, d))
    finally:
        await raw.close()
    return job_answer(submitted, store)


@router.post(
    "/jobs", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic,
    summary="Localize structures in a query volume against templates (needs localization_medlam)",
    description="Result: per structure a 3D box in voxel indices and physical mm, and per-slice 2D boxes.",
    dependencies=[require_available(LOCALIZATION)],
    openapi_extra=form_body(LocalizationJobCreate, _VOLUME, {
        "file": "(query_ct.nii.gz)", "structures": "liver,spleen", "template_ids": "6a1d2c3b-…"}),
    responses=problem_responses(400, 404, 409, 413, 415, 422, 503),
)
async def localize(request: Request, principal: CurrentKey, store: Store, db: DbSession,
                   idempotency_key: IdempotencyKey = None) -> Any:
    upload, form, raw = await read_form(request, LocalizationJobCreate, settings.max_upload_mb << 20)
    try:
        params = {"structures": split_csv(form.structures), "template_ids": split_csv(form.template_ids)}
        check_templates(db, principal, params["template_ids"], params["structures"])
        spec = JobRequest("localization", LOCALIZATION.model or "", form.priority, params,
                          check_idempotency_key(idempotency_key, form.transaction_id),
                          LOCALIZATION.task or "", LOCALIZATION.queue)
        submitted = await submit(request, principal, spec, store, lambda d: save_volume(upload, d))
    finally:
        await raw.close()
    return job_answer(submitted, store)


def split_csv(text: str) -> list[str]:
    """A comma-separated form field as a list (blanks dropped)."""
    return [item.strip() for item in text.split(",") if item.strip()]


MAX_SHOTS = 10


def check_templates(db: DbSession, principal: Any, template_ids: list[str], structures: list[str]) -> None:
    """Refuse at submission what the worker would refuse later: unknown or foreign templates (404),
    too many, or templates without points for a requested structure (422; MedLAM needs every
    structure in every template)."""
    if not template_ids or not structures:
        raise Problem(422, "Invalid request", "name at least one structure and one template", kind="validation-error")
    if len(set(template_ids)) > MAX_SHOTS:
        raise Problem(422, "Invalid request", f"at most {MAX_SHOTS} templates per job", kind="validation-error")
    for template_id in dict.fromkeys(template_ids):
        template = _visible(db, template_id, principal)
        missing = [s for s in structures if s not in template.params.get("structures", {})]
        if missing:
            raise Problem(422, "Structure not in template", f"template {template_id} has no points for "
                          f"{', '.join(missing)}; use templates that annotate every requested structure",
                          kind="structure-not-in-template", template_id=template_id, missing=missing)
