"""Celery task of whole-volume segmentation: `services.segmentation.job.run_segmentation` behind Triton.

Thin: the runner (workers/job_runner.py) claims the job and records the outcome; this wires the
served model's manifest and a Triton predictor into the job function.
"""

from __future__ import annotations

from typing import Any

from celery import Task

from core.artifacts import ArtifactStore
from core.capabilities import SEGMENTATION
from core.settings import settings
from export.manifest import read_manifest
from services.segmentation.job import ModelCard, run_segmentation
from workers.celery_app import celery_app
from workers.job_record import Claim, ProgressRecorder
from workers.job_runner import run_job
from workers.pacs_io import deliver, fetch_source
from workers.triton_predictor import TritonPredictor


@celery_app.task(bind=True, name=SEGMENTATION.task)
def segment_volume(self: Task, job_id: str) -> dict[str, Any] | None:
    return run_job(self, job_id, _segment)


def _segment(job_id: str, claimed: Claim, progress: ProgressRecorder) -> dict[str, Any]:
    store, params = ArtifactStore(), claimed.params
    # a DICOMweb source is fetched into the job folder first; an upload is already there
    input_path = fetch_source(params, store.job_dir(job_id), progress) or store.path(job_id, params["input"])
    predictor = TritonPredictor(claimed.model, settings.triton_grpc_url)
    try:
        card = ModelCard.from_manifest(read_manifest(settings.model_repository / claimed.model /
                                                     predictor.served_version()))
        summary = run_segmentation(
            input_path, store.job_dir(job_id), card, predictor, progress=progress,
            largest_component=bool(params.get("largest_component")), series_uid=params.get("series_uid"),
            allow_modality_mismatch=bool(params.get("allow_modality_mismatch")),
        )
    finally:
        predictor.close()
    deliveries = deliver(params, store.job_dir(job_id))
    return summary | ({"deliveries": deliveries} if deliveries else {})
