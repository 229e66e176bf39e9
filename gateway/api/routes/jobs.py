"""Generic job resource: state, progress, results and artifacts of any capability's job."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from gateway.deps import DbSession, Store
from gateway.problems import Problem
from gateway.schemas import JobPublic
from medstack.artifacts import ArtifactStore
from medstack.db import Job

MEDIA_TYPES = {".json": "application/json", ".png": "image/png", ".gz": "application/gzip"}

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


def job_public(job: Job, store: ArtifactStore) -> JobPublic:
    return JobPublic.from_job(job, store.list(job.id))


def _get(db: DbSession, job_id: str) -> Job:
    job = db.get(Job, job_id)
    if job is None:
        raise Problem(404, "Job not found", f"no job with id {job_id}", kind="job-not-found")
    return job


@router.get("/{job_id}", summary="State, progress and result links of a job")
def get_job(job_id: str, db: DbSession, store: Store) -> JobPublic:
    return job_public(_get(db, job_id), store)


@router.get("/{job_id}/artifacts/{name}", summary="Download one result file of a job")
def get_artifact(job_id: str, name: str, db: DbSession, store: Store) -> FileResponse:
    _get(db, job_id)
    if name.startswith("input") or name not in store.list(job_id):
        raise Problem(404, "Artifact not found", f"job {job_id} has no artifact {name!r}", kind="artifact-not-found")
    media = MEDIA_TYPES.get(Path(name).suffix, "application/octet-stream")
    return FileResponse(store.path(job_id, name), media_type=media, filename=name)
