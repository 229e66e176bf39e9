"""The durable job row as tasks see it: progress while running, the outcome at the end.

Shared by every Celery task so that cancellation and final states behave the same for all kinds.
"""

from __future__ import annotations

import time
from typing import Any

from celery import Task

from medstack.db import Job, JobState, session_factory, utcnow

PROGRESS_EVERY_S = 1.0


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
