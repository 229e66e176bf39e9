"""How a Celery task runs one job: the same discipline for every kind (segmentation, localization,
MedLSAM, valuation).

One execution at a time: an exclusive ``flock`` on ``locks/job.lock`` in the job's artifact folder (the
OS drops it when its holder dies, so a lock still held after a few seconds means a live execution on a
host sharing that folder, and this delivery drops out), and, for executions the lock cannot see, the
heartbeat of ``workers.recovery``: a copy redelivered while another execution still beats for the job
drops out too.
A finished job is not redone; while running the worker heartbeats; cancellation, bad input, the time
limit, Triton being away (retried with back-off, the job shown as waiting) and unexpected failures
each end in a definite job state with a typed error.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from tritonclient.utils import InferenceServerException

from core.artifacts import ArtifactStore
from core.db import Job, JobState, session_factory
from services.common.job_io import JobInputError
from services.common.volume import VolumeError
from workers.job_record import Claim, JobCancelled, ProgressRecorder, claim, finish, is_running
from workers.recovery import Heartbeat, wait_until_orphaned
from workers.triton_predictor import ModelNotServed

log = logging.getLogger(__name__)
MAX_TRITON_RETRIES = 5
LOCK = Path("locks") / "job.lock"  # in a sub-folder: never listed as a result file
# a killed process keeps its locks until the kernel has torn it down (a large address space first),
# so a delivery sent right after a worker's death waits this long for the lock before dropping out
LOCK_WAIT_S = 10.0

# work(job_id, claim, progress) -> the result kept in the job row
Work = Callable[[str, Claim, ProgressRecorder], dict[str, Any]]


@contextlib.contextmanager
def exclusive(path: Path, wait_s: float = LOCK_WAIT_S) -> Iterator[bool]:
    """Exclusive lock, tried for up to ``wait_s``; yields False when another process still holds it.
    The OS drops the lock when its holder dies, so a killed worker never leaves the job locked."""
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    with path.open("a") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(0.2)
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _requeue(job_id: str, stage: str) -> None:
    with session_factory().begin() as db:
        job = db.get(Job, job_id)
        if job is not None:
            job.state, job.stage = JobState.QUEUED, stage


def _failed(job_id: str, kind: str, detail: str) -> None:
    finish(job_id, JobState.FAILED, error={"type": kind, "detail": detail})


def run_job(task: Task, job_id: str, work: Work, time_limit_hint: str = "") -> dict[str, Any] | None:
    """Claim ``job_id``, run ``work(job_id, claim, progress)`` and record the outcome.

    ``time_limit_hint``: what the failure detail tells the user to do when the job runs past the
    worker's time limit (e.g. that finished epochs are checkpointed)."""
    log.info("job %s: received (request id %s)", job_id, getattr(task.request, "request_id", None))
    with exclusive(ArtifactStore().job_dir(job_id) / LOCK) as mine:
        if not mine:
            log.info("job %s: another execution holds it; duplicate delivery dropped", job_id)
            return None
        if is_running(job_id) and not wait_until_orphaned(job_id):
            log.info("job %s: running on another worker; duplicate delivery dropped", job_id)
            return None
        claimed = claim(job_id)
        if claimed is None:
            return None
        if claimed.resumed:
            log.warning("job %s: its previous execution died; taking it over", job_id)
        return _run(task, job_id, work, claimed, time_limit_hint)


def _run(task: Task, job_id: str, work: Work, claimed: Claim, time_limit_hint: str) -> dict[str, Any] | None:
    try:
        with Heartbeat(job_id):
            result = work(job_id, claimed, ProgressRecorder(task, job_id))
    except JobCancelled:
        log.info("job %s: cancelled", job_id)
        return None
    except VolumeError as error:
        _failed(job_id, "invalid-volume", str(error))
        return None
    except JobInputError as error:
        _failed(job_id, error.kind, str(error))
        return None
    except (InferenceServerException, ModelNotServed) as error:
        # Triton restarting or the model reloading: wait and try again, then give up clearly
        if task.request.retries < MAX_TRITON_RETRIES:
            _requeue(job_id, "waiting for Triton")
            raise task.retry(countdown=min(60, 5 * 2**task.request.retries)) from error
        _failed(job_id, "model-unavailable", str(error))
        return None
    except SoftTimeLimitExceeded:
        _failed(job_id, "time-limit", " ".join(filter(None, ["the job ran past the worker's time limit.",
                                                             time_limit_hint])))
        return None
    except Exception as error:
        log.exception("job %s: unexpected failure", job_id)
        _failed(job_id, "internal-error", type(error).__name__)
        return None
    finish(job_id, JobState.SUCCEEDED, result=result)
    log.info("job %s: succeeded", job_id)
    return result
