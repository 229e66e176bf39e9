"""Generic job resource: state, progress, results, artifacts and cancellation of any capability's job.

A key sees the jobs it submitted; an ``admin`` key sees all. Another key's job answers 404, the
same as a job that does not exist, so ids cannot be probed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from core.keys import Scope
from gateway import broker, records
from gateway.api.responses import job_public
from gateway.audit import audit_info
from gateway.auth import require
from gateway.deps import CurrentKey, DbSession, Store
from gateway.problems import Problem, problem_responses
from gateway.schemas import ArtifactPublic, ArtifactsPublic, JobPublic, JobsPublic

log = logging.getLogger(__name__)

MEDIA_TYPES = {".json": "application/json", ".png": "image/png", ".gz": "application/gzip", ".dcm": "application/dicom",
               ".csv": "text/csv", ".nii": "application/octet-stream", ".zip": "application/zip"}


def _audit_job(request: Request) -> None:
    # who read, cancelled or downloaded which job's results is part of the audit trail
    job_id = request.path_params.get("job_id")
    if job_id:
        audit_info(request).job_id = str(job_id)[:36]


router = APIRouter(
    prefix="/v1/jobs", tags=["jobs"], dependencies=[require(Scope.JOBS), Depends(_audit_job)],
    responses=problem_responses(401, 403, 429),
)

JobId = Annotated[str, PathParam(max_length=64, description="the job's id",
                                 examples=["0f8e4c1a-5b6d-4e2f-9a7b-3c1d2e4f5a6b"])]


def _media_type(name: str) -> str:
    return MEDIA_TYPES.get(Path(name).suffix, "application/octet-stream")


@router.get("", summary="Jobs of this key (all jobs for an admin key), newest first")
def list_jobs(
    db: DbSession, store: Store, principal: CurrentKey,
    state: Annotated[Literal["queued", "running", "succeeded", "failed", "cancelled"] | None, Query()] = None,
    kind: Annotated[str | None, Query(max_length=32, examples=["segmentation"])] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> JobsPublic:
    jobs, count = records.list_jobs(db, principal, state, kind, limit, offset)
    return JobsPublic(data=[job_public(j, store) for j in jobs], count=count)


@router.get("/{job_id}", summary="State, progress and result links of a job", responses=problem_responses(404))
def get_job(job_id: JobId, db: DbSession, store: Store, principal: CurrentKey) -> JobPublic:
    return job_public(records.visible_job(db, job_id, principal), store)


@router.delete(
    "/{job_id}", summary="Cancel a job",
    description="A queued job never starts; a running one stops at its next progress step. Cancelling a "
                "cancelled job answers the job again; a job that already succeeded or failed answers 409.",
    responses=problem_responses(404, 409),
)
async def cancel_job(job_id: JobId, db: DbSession, store: Store, principal: CurrentKey) -> JobPublic:
    job = await run_in_threadpool(records.cancel_job, db, job_id, principal)
    if await broker.reachable(timeout_s=0.5):  # else Celery would retry for seconds; the row suffices
        await run_in_threadpool(_revoke, job.id)
    return job_public(job, store)


def _revoke(job_id: str) -> None:
    # the worker also checks the row at every progress step; revoking keeps a queued task from starting
    from workers.celery_app import celery_app

    try:
        celery_app.control.revoke(job_id)
    except Exception as error:  # the row already says cancelled; the worker honours it
        log.warning("job %s: revoke not sent (%s)", job_id, type(error).__name__)


@router.get("/{job_id}/artifacts", summary="Result files of a job", responses=problem_responses(404))
def list_artifacts(job_id: JobId, db: DbSession, store: Store, principal: CurrentKey) -> ArtifactsPublic:
    records.visible_job(db, job_id, principal)
    names = [n for n in store.list(job_id) if not n.startswith("input")]
    return ArtifactsPublic(data=[
        ArtifactPublic(name=n, size_bytes=store.path(job_id, n).stat().st_size, media_type=_media_type(n),
                       href=f"/v1/jobs/{job_id}/artifacts/{n}")
        for n in names
    ])


@router.get(
    "/{job_id}/artifacts/{name}", summary="Download one result file of a job",
    response_class=FileResponse,
    responses={200: {"description": "The file", "content": {
        "application/gzip": {"schema": {"type": "string", "format": "binary"}},
        "application/json": {"schema": {"type": "object"}, "example": {"model": {"name": "reference_hutissue"}}},
        "image/png": {"schema": {"type": "string", "format": "binary"}},
    }}, **problem_responses(404)},
)
def get_artifact(
    job_id: JobId, db: DbSession, store: Store, principal: CurrentKey,
    name: Annotated[str, PathParam(max_length=128, examples=["mask.nii.gz"])],
) -> FileResponse:
    records.visible_job(db, job_id, principal)
    # inputs are the client's own data: not served back
    if name.startswith("input") or name not in store.list(job_id):
        raise Problem(404, "Artifact not found", f"job {job_id} has no artifact {name!r}", kind="artifact-not-found")
    return FileResponse(store.path(job_id, name), media_type=_media_type(name), filename=name)
