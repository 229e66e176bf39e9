"""The durable job row as tasks see it: progress while running, the outcome at the end.

Shared by every Celery task so that cancellation and final states behave the same for all kinds.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from celery import Task

from core.db import Job, JobState, session_factory, utcnow

PROGRESS_EVERY_S = 1.0
log = logging.getLogger(__name__)


class JobCancelled(Exception):
    """The job row says cancelled: stop working on it."""


class ProgressRecorder:
    """``(stage, fraction)`` into the job row and the Celery state, at most once a second;
    raises ``JobCancelled`` when the row says cancelled (checked at each write)."""

    def __init__(self, task: Task, job_id: str) -> None:
        self.task, self.job_id, self.last = task, job_id, 0.0
        self.sessions = session_factory()

    def __call__(self, stage: str, fraction: float) -> None:
        now = time.monotonic()
        if now - self.last < PROGRESS_EVERY_S and 0.0 < fraction < 1.0:
            return
        self.last = now
        with self.sessions.begin() as db:
            job = db.get(Job, self.job_id)
            if job is None or job.state == JobState.CANCELLED:
                raise JobCancelled(self.job_id)
            job.stage, job.progress = stage[:32], round(min(fraction, 1.0), 4)
        self.task.update_state(state="PROGRESS", meta={"stage": stage, "progress": fraction})


def finish(job_id: str, state: str, result: dict[str, Any] | None = None, error: dict[str, Any] | None = None) -> None:
    with session_factory().begin() as db:
        job = db.get(Job, job_id)
        if job is None or job.state == JobState.CANCELLED:
            return  # a cancel that landed after the last progress check stands
        job.state, job.result, job.error, job.finished_at = state, result, error, utcnow()
        if state == JobState.SUCCEEDED:
            job.stage, job.progress = "done", 1.0


@dataclass(frozen=True)
class Claim:
    """A job this execution now runs: the row says RUNNING and counts the attempt."""

    model: str
    params: dict[str, Any]
    resumed: bool  # the row already said running: an earlier execution died


def claim(job_id: str) -> Claim | None:
    """Mark the job running for this execution; ``None`` when there is nothing to do (no such
    job, or it already finished — a redelivery after success)."""
    with session_factory().begin() as db:
        job = db.get(Job, job_id)
        if job is None:
            log.warning("job %s: no such job, dropped", job_id)
            return None
        if job.state in JobState.FINAL:
            return None
        resumed = job.state == JobState.RUNNING
        job.state, job.stage, job.attempts = JobState.RUNNING, "starting", job.attempts + 1
        job.started_at = job.started_at or utcnow()
        return Claim(job.model, dict(job.params or {}), resumed)


def is_running(job_id: str) -> bool:
    with session_factory()() as db:
        job = db.get(Job, job_id)
        return job is not None and job.state == JobState.RUNNING
