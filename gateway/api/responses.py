"""How a job is answered: the public resource, and 202 (new) or 200 (idempotent replay)."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from core.artifacts import ArtifactStore
from core.db import Job
from gateway.schemas import JobPublic
from gateway.submission import Submitted

# The OpenAPI ``responses=`` entries of what ``job_answer`` returns, for routes that document them
JOB_ANSWER_RESPONSES = {
    200: {"description": "Replay of an earlier request with the same Idempotency-Key: the same job",
          "model": JobPublic},
    202: {"description": "Job accepted", "headers": {"Location": {"schema": {"type": "string"}}}},
}


def job_public(job: Job, store: ArtifactStore) -> JobPublic:
    return JobPublic.from_job(job, store.list(job.id))


def job_answer(submitted: Submitted, store: ArtifactStore) -> JSONResponse:
    body = job_public(submitted.job, store).model_dump(mode="json")
    headers = {"Location": body["links"]["self"]}
    if submitted.replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(body, status_code=200 if submitted.replayed else 202, headers=headers)
