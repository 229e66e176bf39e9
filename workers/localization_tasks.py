"""Celery tasks of few-shot localization: register a template, localize, MedLSAM-segment.

Thin: each wires a job function of ``services/localization/job.py`` to the runner with Triton-backed
predictors; what is left here is what touches Triton or the template rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from celery import Task

from core.artifacts import ArtifactStore
from core.capabilities import LOCALIZATION, LOCALIZATION_TEMPLATES, MEDLSAM
from core.db import Job, Template, session_factory
from core.settings import settings
from services.localization.job import (
    register_template,
    run_localization,
    run_medlsam,
    template_embeddings,
)
from services.localization.medlam import Predict, StructureEmbedding
from services.localization.medlsam import SegPredict
from workers.celery_app import celery_app
from workers.job_record import Claim, ProgressRecorder
from workers.job_runner import run_job
from workers.pacs_io import deliver, fetch_source
from workers.triton_models import TritonModel

MEDLAM_MODEL = "localization_medlam"


def _medlam_predict(model: TritonModel) -> Predict:
    def predict(crops: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        out = model(image=crops.astype(np.float32))
        return out["rdr"], out["features_quarter"], out["features_half"], out["features_full"]

    return predict


def _seg_predict(model: TritonModel) -> SegPredict:
    def predict(images: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        return model(image=images.astype(np.float32), box=boxes.astype(np.float32))["logits"]

    return predict


@celery_app.task(bind=True, name=LOCALIZATION_TEMPLATES.task)
def embed_template(self: Task, job_id: str) -> dict[str, Any] | None:
    return run_job(self, job_id, _embed_template)


def _embed_template(job_id: str, claimed: Claim, progress: ProgressRecorder) -> dict[str, Any]:
    params = claimed.params
    with TritonModel(claimed.model, settings.triton_grpc_url) as medlam:
        features, shape_ijk = register_template(ArtifactStore().path(job_id, params["input"]), params["points"],
                                                _medlam_predict(medlam), progress, params.get("series_uid"))
        model = medlam.facts()
    with session_factory().begin() as db:
        job = db.get(Job, job_id)
        # the template takes the job's id: a redelivered task rewrites the same row, never a second
        db.merge(Template(id=job_id, name=params["name"], model=model["name"], model_version=model["version"],
                          model_sha256=model["sha256"], api_key_id=job.api_key_id if job else None,
                          input_sha256=job.input_sha256 if job else "", features=features,
                          params={"structures": params["points"], "shape_ijk": shape_ijk}))
    return {"template_id": job_id, "name": params["name"], "structures": sorted(params["points"]), "model": model}


def _templates(ids: Sequence[str], structures: Sequence[str], model: dict[str, str]) -> list[
        dict[str, StructureEmbedding]]:
    """The stored templates' embeddings of ``structures`` (checked by `template_embeddings`)."""
    with session_factory()() as db:
        rows = [(template_id, db.get(Template, template_id)) for template_id in ids]
        return [template_embeddings(template_id, row.features if row else None, row.model_sha256 if row else None,
                                    row.params.get("structures", {}) if row else (), structures, model)
                for template_id, row in rows]


def _box_job(job_id: str, params: dict[str, Any], medlam: TritonModel,
             input_path: Path | None = None) -> dict[str, Any]:
    """The arguments the two box jobs (`run_localization`, `run_medlsam`) share; ``input_path``: a fetched
    series instead of the upload."""
    store, model = ArtifactStore(), medlam.facts()
    return {"input_path": input_path or store.path(job_id, params["input"]), "out_dir": store.job_dir(job_id),
            "templates": _templates(params["template_ids"], params["structures"], model),
            "structures": params["structures"], "predict": _medlam_predict(medlam), "model": model,
            "template_ids": params["template_ids"], "series_uid": params.get("series_uid"),
            "allow_modality_mismatch": bool(params.get("allow_modality_mismatch"))}


@celery_app.task(bind=True, name=LOCALIZATION.task)
def localize(self: Task, job_id: str) -> dict[str, Any] | None:
    def work(job_id: str, claimed: Claim, progress: ProgressRecorder) -> dict[str, Any]:
        with TritonModel(MEDLAM_MODEL, settings.triton_grpc_url) as medlam:
            return run_localization(**_box_job(job_id, claimed.params, medlam), progress=progress)

    return run_job(self, job_id, work)


@celery_app.task(bind=True, name=MEDLSAM.task)
def medlsam_segment(self: Task, job_id: str) -> dict[str, Any] | None:
    def work(job_id: str, claimed: Claim, progress: ProgressRecorder) -> dict[str, Any]:
        # a DICOMweb source is fetched into the job folder first, and the SEG delivered after success
        fetched = fetch_source(claimed.params, ArtifactStore().job_dir(job_id), progress)
        with (TritonModel(MEDLAM_MODEL, settings.triton_grpc_url) as medlam,
              TritonModel(claimed.model, settings.triton_grpc_url) as segmenter):
            summary = run_medlsam(**_box_job(job_id, claimed.params, medlam, fetched),
                                  segment=_seg_predict(segmenter), segmenter=segmenter.facts(), progress=progress,
                                  dicom_seg=bool(claimed.params.get("output_dicom_seg")))
        deliveries = deliver(claimed.params, ArtifactStore().job_dir(job_id))
        return summary | ({"deliveries": deliveries} if deliveries else {})

    return run_job(self, job_id, work)
