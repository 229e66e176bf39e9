"""How a Celery task runs one Triton-backed job: the same discipline for every kind.

A redelivered copy drops out while another execution still beats for the job; a finished job is
not redone; while running the worker heartbeats (workers.recovery); cancellation, bad input,
Triton being away (retried with back-off, the job shown as waiting) and unexpected failures each
end in a definite job state with a typed error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import Task
from tritonclient.utils import InferenceServerException

from core.db import Job, JobState, session_factory
from services.common.volume import VolumeError
from workers.job_record import Claim, JobCancelled, ProgressRecorder, claim, finish, is_running
from workers.recovery import Heartbeat, wait_until_orphaned
from workers.triton_predictor import ModelNotServed

log = logging.getLogger(__name__)
MAX_TRITON_RETRIES = 5


class JobInputError(Exception):
    """The request cannot be done as asked (e.g. a template lacks a structure); ``kind`` types it."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


Work = Callable[[str, Claim, ProgressRecorder], dict[str, Any]]


def _requeue(job_id: str, stage: str) -> None:
    with session_factory().begin() as db:
        job = db.get(Job, job_id)
        if job is not None:
            job.state, job.stage = JobState.QUEUED, stage


def run_triton_job(task: Task, job_id: str, work: Work) -> dict[str, Any] | None:
    """Claim ``job_id``, run ``work(job_id, claim, progress)`` and record the outcome."""
    log.info("job %s: received (request id %s)", job_id, getattr(task.request, "request_id", None))
    # a copy redelivered while another execution still beats for the job drops out
    if is_running(job_id) and not wait_until_orphaned(job_id):
        log.info("job %s: running on another worker; duplicate delivery dropped", job_id)
        return None
    claimed = claim(job_id)
    if claimed is None:
        return None
    try:
        with Heartbeat(job_id):
            result = work(job_id, claimed, ProgressRecorder(task, job_id))
    except JobCancelled:
        log.info("job %s: cancelled", job_id)
        return None
    except VolumeError as error:
        finish(job_id, JobState.FAILED, error={"type": "invalid-volume", "detail": str(error)})
        return None
    except JobInputError as error:
        finish(job_id, JobState.FAILED, error={"type": error.kind, "detail": str(error)})
        return None
    except (InferenceServerException, ModelNotServed) as error:
        # Triton restarting or the model reloading: wait and try again, then give up clearly
        if task.request.retries < MAX_TRITON_RETRIES:
            _requeue(job_id, "waiting for Triton")
            raise task.retry(countdown=min(60, 5 * 2**task.request.retries)) from error
        finish(job_id, JobState.FAILED, error={"type": "model-unavailable", "detail": str(error)})
        return None
    except Exception as error:
        log.exception("job %s: unexpected failure", job_id)
        finish(job_id, JobState.FAILED, error={"type": "internal-error", "detail": type(error).__name__})
        return None
    finish(job_id, JobState.SUCCEEDED, result=result)
    log.info("job %s: succeeded", job_id)
    return result
