"""Celery task of the Hermes family (issue #21): universal segmentation behind Triton (``hermes_r``).

Thin: wires `services.hermes.job.run_hermes_segmentation` to the runner (workers/job_runner.py, which
gives the durability every job kind has: acks late, one execution at a time, heartbeat and orphan
requeue by kind) with the served model's facts, its trained task lists from the manifest, and a Triton
call per batch of windows. Three named inputs (image, task indices, modality), so the multi-input
`TritonModel` over plain gRPC; a batch of two 64³ windows is 2 MB in and ≤ 32 MB of logits out.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from celery import Task

from core.artifacts import ArtifactStore
from core.capabilities import HERMES
from core.settings import settings
from services.hermes.job import BATCH_PATCHES, TaskPredict, run_hermes_segmentation
from workers.celery_app import celery_app
from workers.job_record import Claim, ProgressRecorder
from workers.job_runner import run_job
from workers.triton_models import TritonModel


def triton_predict(model: TritonModel) -> TaskPredict:
    """(B, 1, 64, 64, 64) windows, task indices (T,), modality index → (B, T, 64, 64, 64) logits from Triton."""

    def predict(patches: np.ndarray, tasks: np.ndarray, modality: int) -> np.ndarray:
        batch = len(patches)
        out = model(image=np.ascontiguousarray(patches, dtype=np.float32),
                    tasks=np.tile(np.asarray(tasks, np.int64), (batch, 1)),
                    modality=np.full((batch, 1), modality, np.int64))
        return out["task_logits"]

    return predict


@celery_app.task(bind=True, name=HERMES.task)
def segment_tasks(self: Task, job_id: str) -> dict[str, Any] | None:
    def work(job_id: str, claimed: Claim, progress: ProgressRecorder) -> dict[str, Any]:
        store, params = ArtifactStore(), claimed.params
        with TritonModel(claimed.model, settings.triton_grpc_url) as hermes:
            trained = hermes.manifest()["preprocessing"]["trained_tasks"]
            return run_hermes_segmentation(
                store.path(job_id, params["input"]), store.job_dir(job_id), hermes.facts(), triton_predict(hermes),
                trained, progress, tasks=params["tasks"], modality=params.get("modality"),
                series_uid=params.get("series_uid"),
                allow_modality_mismatch=bool(params.get("allow_modality_mismatch")), batch_size=BATCH_PATCHES)

    return run_job(self, job_id, work)
