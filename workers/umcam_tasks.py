"""Celery tasks of the UM-CAM family (issue #20): brain extraction and pseudo-label jobs behind Triton.

Thin: each wires a job function of ``services/umcam/job.py`` to the runner (workers/job_runner.py)
with the served model's facts and a Triton call; slices are small (128×128), so plain gRPC.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from celery import Task

from core.artifacts import ArtifactStore
from core.capabilities import UMCAM, UMCAM_PSEUDO_LABELS
from core.settings import settings
from services.common.input_checks import model_modality
from services.umcam.job import BATCH_SLICES, run_brain_extraction, run_pseudo_labels
from workers.celery_app import celery_app
from workers.job_record import Claim, ProgressRecorder
from workers.job_runner import run_job
from workers.triton_models import TritonModel


def _max_batch(model: TritonModel) -> int:
    """Slices per call: the job's default, or fewer where the served config allows fewer (Triton
    refuses a larger batch, and the runner would take the refusal for Triton being away)."""
    client = grpcclient.InferenceServerClient(model.url)
    try:
        served = int(client.get_model_config(model.name, as_json=True)["config"].get("max_batch_size", 0))
    finally:
        client.close()
    return min(BATCH_SLICES, served) if served > 0 else BATCH_SLICES


def _common(job_id: str, params: dict[str, Any], model: TritonModel) -> dict[str, Any]:
    """The arguments both job functions take."""
    store = ArtifactStore()
    return {"input_path": store.path(job_id, params["input"]), "out_dir": store.job_dir(job_id),
            "model": model.facts(), "modality": model_modality(model.manifest()), "batch_size": _max_batch(model),
            "series_uid": params.get("series_uid"),
            "allow_modality_mismatch": bool(params.get("allow_modality_mismatch"))}


@celery_app.task(bind=True, name=UMCAM.task)
def extract_brain(self: Task, job_id: str) -> dict[str, Any] | None:
    def work(job_id: str, claimed: Claim, progress: ProgressRecorder) -> dict[str, Any]:
        with TritonModel(claimed.model, settings.triton_grpc_url) as unet:
            return run_brain_extraction(**_common(job_id, claimed.params, unet),
                                        predict=lambda slices: unet(image=slices)["logits"], progress=progress,
                                        largest_component=bool(claimed.params.get("largest_component", True)))

    return run_job(self, job_id, work)


@celery_app.task(bind=True, name=UMCAM_PSEUDO_LABELS.task)
def pseudo_labels(self: Task, job_id: str) -> dict[str, Any] | None:
    def work(job_id: str, claimed: Claim, progress: ProgressRecorder) -> dict[str, Any]:
        with TritonModel(claimed.model, settings.triton_grpc_url) as classifier:
            def predict(slices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                out = classifier(image=slices)
                return out["presence"], out["cams"]

            return run_pseudo_labels(**_common(job_id, claimed.params, classifier),
                                     slice_labels=claimed.params["slice_labels"], predict=predict,
                                     progress=progress)

    return run_job(self, job_id, work)
