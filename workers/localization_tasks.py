"""Celery tasks of few-shot localization: register a template, localize, MedLSAM-segment.

Thin: they load the upload and the templates, call workers/localization_job.py with Triton-backed
predictors, and store the template or the result. Run through job_runner like every Triton job.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from celery import Task

from core.artifacts import ArtifactStore
from core.db import Job, Template, session_factory
from core.settings import settings
from services.localization.medlam import Predict, StructureEmbedding
from services.localization.medlsam import SegPredict
from workers.celery_app import celery_app
from workers.job_record import Claim, ProgressRecorder
from workers.job_runner import JobInputError, run_triton_job
from workers.localization_job import (
    PREVIEW_NAME,
    RESULT_NAME,
    localize_structures,
    read_embedding,
    segment_boxes,
    template_features,
    write_box_preview,
    write_outputs,
)
from workers.segmentation_job import load_input
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


def _model_facts(model: TritonModel) -> dict[str, str]:
    return {"name": model.name, "version": model.version, "sha256": model.manifest()["sha256"]}


@celery_app.task(bind=True, name="workers.localization_tasks.embed_template")
def embed_template(self: Task, job_id: str) -> dict[str, Any] | None:
    return run_triton_job(self, job_id, _embed_template)


def _embed_template(job_id: str, claimed: Claim, progress: ProgressRecorder) -> dict[str, Any]:
    params = claimed.params
    progress("loading", 0.0)
    original, _ = load_input(ArtifactStore().path(job_id, params["input"]), params.get("series_uid"))
    medlam = TritonModel(claimed.model, settings.triton_grpc_url)
    try:
        progress("embedding", 0.2)
        features = template_features(original, params["points"], _medlam_predict(medlam))
        model = _model_facts(medlam)
    finally:
        medlam.close()
    with session_factory().begin() as db:
        job = db.get(Job, job_id)
        # the template takes the job's id: a redelivered task rewrites the same row, never a second
        db.merge(Template(id=job_id, name=params["name"], model=model["name"], model_version=model["version"],
                          model_sha256=model["sha256"], api_key_id=job.api_key_id if job else None,
                          input_sha256=job.input_sha256 if job else "", features=features,
                          params={"structures": params["points"], "shape_ijk": list(original.shape[::-1])}))
    return {"template_id": job_id, "name": params["name"], "structures": sorted(params["points"]), "model": model}


def _templates(ids: list[str], structures: list[str], model: dict[str, str]) -> list[dict[str, StructureEmbedding]]:
    """The templates' embeddings of ``structures``; refuses templates embedded by another model."""
    loaded = []
    with session_factory()() as db:
        for template_id in ids:
            template = db.get(Template, template_id)
            if template is None or template.features is None:
                raise JobInputError("template-not-found", f"template {template_id} does not exist (any more)")
            if template.model_sha256 != model["sha256"]:
                raise JobInputError("template-stale", f"template {template_id} was embedded by another version of "
                                    f"{model['name']}; register it again")
            missing = [s for s in structures if s not in template.params.get("structures", {})]
            if missing:
                raise JobInputError("structure-not-in-template", f"template {template_id} has no points for "
                                    f"{', '.join(missing)}")
            loaded.append({s: read_embedding(template.features, s) for s in structures})
    return loaded


def _localize(job_id: str, claimed: Claim, progress: ProgressRecorder) -> tuple[dict[str, Any], Any, Any]:
    params = claimed.params
    progress("loading", 0.0)
    original, series = load_input(ArtifactStore().path(job_id, params["input"]), params.get("series_uid"))
    medlam = TritonModel(MEDLAM_MODEL, settings.triton_grpc_url)
    try:
        model = _model_facts(medlam)
        templates = _templates(params["template_ids"], params["structures"], model)
        progress("localizing", 0.1)
        boxes = localize_structures(original, templates, params["structures"], _medlam_predict(medlam))
    finally:
        medlam.close()
    result = {"model": model, "template_ids": params["template_ids"], "shots": len(templates),
              "coordinates": "box_voxel: voxel indices (i, j, k) of the uploaded volume; box_mm, points_mm: "
                             "millimetres in the DICOM patient frame (LPS)",
              "structures": boxes}
    return result, original, series


@celery_app.task(bind=True, name="workers.localization_tasks.localize")
def localize(self: Task, job_id: str) -> dict[str, Any] | None:
    def work(job_id: str, claimed: Claim, progress: ProgressRecorder) -> dict[str, Any]:
        result, original, _ = _localize(job_id, claimed, progress)
        out = ArtifactStore().job_dir(job_id)
        out.mkdir(parents=True, exist_ok=True)
        write_box_preview(original, result["structures"], out / PREVIEW_NAME)
        (out / RESULT_NAME).write_text(json.dumps(result, indent=2))
        progress("done", 1.0)
        return result | {"artifacts": [RESULT_NAME, PREVIEW_NAME]}

    return run_triton_job(self, job_id, work)


@celery_app.task(bind=True, name="workers.localization_tasks.medlsam_segment")
def medlsam_segment(self: Task, job_id: str) -> dict[str, Any] | None:
    def work(job_id: str, claimed: Claim, progress: ProgressRecorder) -> dict[str, Any]:
        result, original, series = _localize(job_id, claimed, progress)
        segmenter = TritonModel(claimed.model, settings.triton_grpc_url)
        try:
            progress("segmenting", 0.4)
            mask = segment_boxes(original, result["structures"], _seg_predict(segmenter))
            result["segmenter"] = _model_facts(segmenter)
        finally:
            segmenter.close()
        progress("writing", 0.9)
        artifacts = write_outputs(ArtifactStore().job_dir(job_id), original, mask, list(result["structures"]),
                                  result, result["segmenter"], series, bool(claimed.params.get("output_dicom_seg")))
        progress("done", 1.0)
        return result | {"artifacts": artifacts}

    return run_triton_job(self, job_id, work)
