"""Segmentation jobs: upload a CT volume, get a job; the worker writes mask and summary."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile, status

from gateway.api.routes.jobs import job_public
from gateway.catalog import segmentation_models
from gateway.deps import DbSession, Store
from gateway.problems import Problem
from gateway.schemas import JobPublic
from gateway.uploads import save_upload
from medstack.db import Job
from medstack.settings import settings
from workers.tasks import segment_volume

router = APIRouter(prefix="/v1/segmentation", tags=["segmentation"])


@router.post("/jobs", status_code=status.HTTP_202_ACCEPTED, summary="Segment a 3D CT volume")
async def create_job(
    db: DbSession,
    store: Store,
    file: Annotated[UploadFile, File(description="3D CT as NIfTI (.nii/.nii.gz), NRRD or MetaImage")],
    model: Annotated[str | None, Form(description="served segmentation model; default: the best one")] = None,
    priority: Annotated[int, Form(ge=0, le=9)] = 5,
) -> JobPublic:
    available = segmentation_models()
    if not available:
        raise Problem(503, "Model missing", f"no segmentation model is built; expected one of "
                      f"{', '.join(settings.segmentation_models)} (run `medstack export`)", kind="model-missing")
    chosen = model or available[0]
    if chosen not in available:
        raise Problem(422, "Unknown model", f"model {chosen!r} is not a served segmentation model; "
                      f"choose from {', '.join(available)}", kind="unknown-model")
    job = Job(kind="segmentation", model=chosen, priority=priority, input_sha256="", params={})
    db.add(job)
    db.flush()
    name, digest, _ = await save_upload(file, store.job_dir(job.id), "input", settings.max_upload_mb << 20)
    job.input_sha256, job.params = digest, {"input": name}
    db.commit()
    segment_volume.apply_async(args=[job.id], task_id=job.id, priority=priority)
    return job_public(job, store)
