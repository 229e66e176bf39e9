"""Celery task of few-shot tasks (queue ``batch``): ``services.fewshot.job.adaptation_job`` through the job runner.

The job adapts in-process with the frozen torch encoder (``networks.load_encoder``: prompt tuning needs its
gradients), so it calls no Triton model; it quotes the encoder's export manifest, whose ONNX the gateway's
predictions run on (same checkpoint, parity-checked at export). The head and the provenance go into the task
row (``fewshot_tasks``, id = the job's id) and the job folder; a redelivered job rewrites the same row.
"""

from __future__ import annotations

from typing import Any

from celery import Task

from core.artifacts import ArtifactStore
from core.capabilities import FEWSHOT
from core.db import FewshotTask, Job, JobState, session_factory
from core.settings import settings
from export.manifest import latest_manifest
from services.fewshot.job import adaptation_job
from workers.celery_app import celery_app
from workers.job_record import Claim, JobCancelled, ProgressRecorder
from workers.job_runner import run_job

TIME_LIMIT_HINT = "Send fewer support images, or a method without prompt tuning."


@celery_app.task(bind=True, name=FEWSHOT.task)
def adapt_task(self: Task, job_id: str) -> dict[str, Any] | None:
    return run_job(self, job_id, _adapt, time_limit_hint=TIME_LIMIT_HINT)


def _adapt(job_id: str, claimed: Claim, progress: ProgressRecorder) -> dict[str, Any]:
    params = claimed.params
    manifest = latest_manifest(settings.model_repository / claimed.model) if claimed.model else None
    head, provenance = adaptation_job(params, ArtifactStore().job_dir(job_id), manifest, progress)
    with session_factory().begin() as db:
        job = db.get(Job, job_id)
        if job is None or job.state == JobState.CANCELLED:  # the task was deleted while adapting
            raise JobCancelled(job_id)
        task = db.get(FewshotTask, job_id)
        if task is None:  # the worker was quicker than the gateway's insert: the row comes from the job
            task = FewshotTask(id=job_id, name=params.get("name", ""), encoder=params["encoder"],
                               method=params["method"], model=claimed.model, class_names=params["class_names"],
                               multi_label=bool(params.get("multi_label")), api_key_id=job.api_key_id,
                               input_sha256=job.input_sha256)
            db.add(task)
        task.head, task.head_sha256, task.provenance = head, provenance["head"]["sha256"], provenance
    return {"task_id": job_id, "kind": "fewshot_adapt", "model": provenance["encoder"],
            "provenance": {k: v for k, v in provenance.items() if k != "support_set"}
            | {"support_set": {k: v for k, v in provenance["support_set"].items() if k != "files"}}}
