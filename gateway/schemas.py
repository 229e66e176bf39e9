"""Public API schemas, apart from persistence models."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from medstack.db import Job


class JobPublic(BaseModel):
    id: str
    kind: str
    model: str
    state: str = Field(examples=["running"])
    stage: str = Field(examples=["inference"])
    progress: float = Field(ge=0, le=1, examples=[0.42])
    priority: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    links: dict[str, str] = Field(default_factory=dict)

    @classmethod
    def from_job(cls, job: Job, artifacts: list[str]) -> JobPublic:
        links = {"self": f"/v1/jobs/{job.id}"}
        links |= {name: f"/v1/jobs/{job.id}/artifacts/{name}" for name in artifacts if not name.startswith("input")}
        return cls(
            id=job.id, kind=job.kind, model=job.model, state=job.state, stage=job.stage, progress=job.progress,
            priority=job.priority, created_at=job.created_at, started_at=job.started_at,
            finished_at=job.finished_at, result=job.result, error=job.error, links=links,
        )


class ModelPublic(BaseModel):
    name: str
    version: int
    sha256: str
    description: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    parity: dict[str, Any]
    validation_metrics: dict[str, Any]
