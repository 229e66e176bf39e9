"""Celery task of data valuation (queue ``batch``): `services.valuation.job.valuation_job` through
the job runner, like every other job.

The job reads its params (``ValuationParams``, docs/valuation.md) from the job row and its upload
from the job's artifact folder, and writes its outputs there. Running twice is safe: a finished job
is not redone, and every training run checkpoints after each epoch, so a job delivered again after
a worker crash resumes from the last finished epoch and rewrites the same files (write-then-rename),
never a second set. One execution at a time: the runner's lock and heartbeat (workers/job_runner.py).
"""

from __future__ import annotations

from typing import Any

from celery import Task

from core.artifacts import ArtifactStore
from core.capabilities import VALUATION
from services.valuation.job import valuation_job
from workers.celery_app import celery_app
from workers.job_record import Claim, ProgressRecorder
from workers.job_runner import run_job

TIME_LIMIT_HINT = ("Its finished epochs are checkpointed in the job folder; submit it again with fewer epochs or "
                   "seeds, or a smaller dataset.")


@celery_app.task(bind=True, name=VALUATION.task)
def score_dataset(self: Task, job_id: str) -> dict[str, Any] | None:
    return run_job(self, job_id, _score, time_limit_hint=TIME_LIMIT_HINT)


def _score(job_id: str, claimed: Claim, progress: ProgressRecorder) -> dict[str, Any]:
    return valuation_job(claimed.params, ArtifactStore().job_dir(job_id), progress)
