"""Celery tasks. Thin: they fetch the job record, call the job function, record the outcome.

Tasks take a job id and can run twice (redelivery after a worker crash): a finished job is not
redone, and outputs are written under the job's own artifact folder by replace-on-write.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from celery.signals import worker_ready

from core.artifacts import ArtifactStore
from core.settings import settings
from export.manifest import read_manifest
from workers.celery_app import celery_app
from workers.job_record import Claim, ProgressRecorder
from workers.job_runner import run_triton_job
from workers.recovery import start_orphan_scanner
from workers.segmentation_job import ModelCard, run_segmentation
from workers.triton_predictor import TritonPredictor

log = logging.getLogger(__name__)


@celery_app.task(bind=True, name="workers.tasks.segment_volume")
def segment_volume(self: Task, job_id: str) -> dict[str, Any] | None:
    return run_triton_job(self, job_id, _segment)


def _segment(job_id: str, claimed: Claim, progress: ProgressRecorder) -> dict[str, Any]:
    store = ArtifactStore()
    predictor = TritonPredictor(claimed.model, settings.triton_grpc_url)
    try:
        version = predictor.served_version()
        card = ModelCard.from_manifest(read_manifest(settings.model_repository / claimed.model / version))
        params = claimed.params
        return run_segmentation(
            store.path(job_id, params["input"]), store.job_dir(job_id), card, predictor, progress=progress,
            largest_component=bool(params.get("largest_component")), series_uid=params.get("series_uid"),
        )
    finally:
        predictor.close()


# the task that runs each kind of job; the orphan scanner requeues by kind
TASK_BY_KIND = {
    "segmentation": "workers.tasks.segment_volume",
    "valuation": "workers.valuation_tasks.score_dataset",
    "localization_template": "workers.localization_tasks.embed_template",
    "localization": "workers.localization_tasks.localize",
    "medlsam": "workers.localization_tasks.medlsam_segment",
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
