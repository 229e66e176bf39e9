"""Celery tasks. Thin: they fetch the job record, call the job function, record the outcome.

Tasks take a job id and can run twice (redelivery after a worker crash): a finished job is not
redone, and outputs are written under the job's own artifact folder by replace-on-write.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from celery.signals import worker_ready
from tritonclient.utils import InferenceServerException

from export.manifest import read_manifest
from medstack.artifacts import ArtifactStore
from medstack.db import Job, JobState, session_factory
from medstack.settings import settings
from services.common.volume import VolumeError
from workers.celery_app import celery_app
from workers.job_record import JobCancelled, ProgressRecorder, claim, finish, is_running
from workers.recovery import Heartbeat, start_orphan_scanner, wait_until_orphaned
from workers.segmentation_job import ModelCard, run_segmentation
from workers.triton_predictor import ModelNotServed, TritonPredictor

log = logging.getLogger(__name__)
MAX_TRITON_RETRIES = 5


def _requeue(job_id: str, stage: str) -> None:
    with session_factory().begin() as db:
        job = db.get(Job, job_id)
        if job is not None:
            job.state, job.stage = JobState.QUEUED, stage


@celery_app.task(bind=True, name="workers.tasks.segment_volume")
def segment_volume(self: Task, job_id: str) -> dict[str, Any] | None:
    log.info("job %s: received (request id %s)", job_id, getattr(self.request, "request_id", None))
    # a copy redelivered while another execution still beats for the job drops out
    if is_running(job_id) and not wait_until_orphaned(job_id):
        log.info("job %s: running on another worker; duplicate delivery dropped", job_id)
        return None
    claimed = claim(job_id)
    if claimed is None:
        return None
    model, params = claimed.model, claimed.params

    store = ArtifactStore()
    predictor = TritonPredictor(model, settings.triton_grpc_url)
    try:
        with Heartbeat(job_id):
            version = predictor.served_version()
            card = ModelCard.from_manifest(read_manifest(settings.model_repository / model / version))
            summary = run_segmentation(
                store.path(job_id, params["input"]), store.job_dir(job_id), card, predictor,
                progress=ProgressRecorder(self, job_id), largest_component=bool(params.get("largest_component")),
                series_uid=params.get("series_uid"),
            )
    except JobCancelled:
        log.info("job %s: cancelled", job_id)
        return None
    except VolumeError as error:
        finish(job_id, JobState.FAILED, error={"type": "invalid-volume", "detail": str(error)})
        return None
    except (InferenceServerException, ModelNotServed) as error:
        # Triton restarting or the model reloading: wait and try again, then give up clearly
        if self.request.retries < MAX_TRITON_RETRIES:
            _requeue(job_id, "waiting for Triton")
            raise self.retry(countdown=min(60, 5 * 2**self.request.retries)) from error
        finish(job_id, JobState.FAILED, error={"type": "model-unavailable", "detail": str(error)})
        return None
    except Exception as error:
        log.exception("job %s: unexpected failure", job_id)
        finish(job_id, JobState.FAILED, error={"type": "internal-error", "detail": type(error).__name__})
        return None
    finally:
        predictor.close()
    finish(job_id, JobState.SUCCEEDED, result=summary)
    log.info("job %s: succeeded with %s v%s", job_id, card.name, card.version)
    return summary


# the task that runs each kind of job; the orphan scanner requeues by kind
TASK_BY_KIND = {
    "segmentation": "workers.tasks.segment_volume",
    "valuation": "workers.valuation_tasks.score_dataset",
}


def _requeue_by_kind(job_id: str, kind: str) -> None:
    name = TASK_BY_KIND.get(kind)
    if name is None:
        log.error("job %s: no task for kind %r; left for the broker's redelivery", job_id, kind)
        return
    celery_app.send_task(name, args=[job_id], task_id=f"{job_id}-requeued")


@worker_ready.connect
def _scan_for_orphans(**_: object) -> None:
    start_orphan_scanner(_requeue_by_kind)
