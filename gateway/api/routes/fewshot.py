"""Few-shot tasks (issue #22): a client's own classifier on a MedStack foundation encoder.

``POST /v1/fewshot/tasks`` takes the encoder, the adaptation method, the class names and the labelled support
images (a zip with ``labels.csv``, ``services/fewshot/support.py``), checks what can be checked without decoding
an image (encoder, method, text method on an encoder without text, the CSV against the zip, classes without
examples: 422 problem+json naming what to fix) and queues an adaptation job (``workers.fewshot_tasks``); the task
is visible at once, ``status`` following its job (pending → running → ready | failed with the job's typed error).

``POST /v1/fewshot/tasks/{id}/predict`` (one image) is synchronous: the image is decoded and preprocessed here,
the encoder runs on Triton (its ONNX model, inputs ``image`` and ``prompt``: the task's learned prompt, or zeros),
and the task's head is applied **here, in numpy, in the same request** (``heads.apply``): a head is a few KB, so
no per-task Triton model is loaded or versioned, and a task is usable the moment its job ends. Every answer
carries the task's provenance (encoder version and sha256, method, shots, support-image sha256s).
"""

from __future__ import annotations

import shutil
import threading
import time
from collections import OrderedDict
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import Path as PathParam
from fastapi import Request, Response, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from core.capabilities import FEWSHOT
from core.db import FewshotTask, Job, JobState, session_factory, utcnow
from core.settings import settings
from gateway.api.forms import form_body, read_upload, split_csv
from gateway.archives import inspect_zip
from gateway.audit import audit_info
from gateway.auth import Principal
from gateway.capabilities import capability_router, model_missing, require_available
from gateway.catalog import manifest_of, provenance
from gateway.deps import CurrentKey, DbSession, IdempotencyKey, Store, Triton
from gateway.problems import Problem, problem_responses
from gateway.schemas import JobCreate, UtcDatetime
from gateway.submission import check_idempotency_key, job_request, submit
from gateway.triton_client import TritonError, triton_problem
from gateway.uploads import SavedInput, archive_limits, chunks_of, max_upload_bytes, save_stream, unsupported

router = capability_router(FEWSHOT, "fewshot")

TaskId = Annotated[str, PathParam(max_length=64, examples=["6a1d2c3b-0e9f-4a8b-9c7d-5e4f3a2b1c0d"])]
MAX_PREDICT_UPLOAD_MB = 64
STATUS = {JobState.QUEUED: "pending", JobState.RUNNING: "running", JobState.SUCCEEDED: "ready",
          JobState.FAILED: "failed", JobState.CANCELLED: "failed"}


# ---- schemas -----------------------------------------------------------------------------------


class FewshotTaskCreate(JobCreate):
    """Form fields of a new task; the support zip is the file part."""

    encoder: str = Field(min_length=1, max_length=32, description="a few-shot encoder (`chest`, `chest-vlm`, `ct`)",
                         examples=["chest"])
    method: str = Field(min_length=1, max_length=16, description="linear, prototype, prompt, zeroshot, coop, cones "
                        "(the last three need an encoder with a text tower)", examples=["linear"])
    class_names: str = Field(min_length=3, max_length=4000, description="comma-separated class names, in score "
                             "order; labels.csv uses the same names", examples=["normal,cardiomegaly,effusion"])
    multi_label: bool = Field(False, description="several classes per image (labels.csv: names separated by ';'); "
                              "scores are then per-class probabilities instead of a softmax")
    name: str | None = Field(None, min_length=1, max_length=128, examples=["ward-7 effusion triage"])
    seed: int = Field(0, ge=0, le=2**31 - 1)


class FewshotPredictCreate(BaseModel):
    """A prediction has no form fields besides the image (the file part)."""

    model_config = ConfigDict(extra="forbid")


_SHA = "242f37384f27b41b36f5cfd4620bfe937a9b627243b86298db0db4c5725ebcea"
_TASK_ID = "6a1d2c3b-0e9f-4a8b-9c7d-5e4f3a2b1c0d"
_PROVENANCE = {
    "encoder": {"name": "chest", "model": "fewshot_chest", "version": "1", "sha256": _SHA,
                "checkpoint_sha256": _SHA, "input_kind": "radiograph", "feature_dim": 224},
    "method": "linear", "multi_label": False, "seed": 0, "class_names": ["normal", "effusion"],
    "shots_per_class": {"normal": 5, "effusion": 5}, "shots": 5,
    "support_set": {"images": 10, "ignored_files": 0, "sha256": _SHA,
                    "files": [{"file": "normal_01.png", "sha256": _SHA, "labels": ["normal"]}, "…"]},
    "head": {"sha256": _SHA, "bytes": 2911, "prompt": False}, "adaptation_seconds": 1.8,
}
_TASK_EXAMPLE = {
    "id": _TASK_ID, "name": "chest linear (2 classes)", "encoder": "chest", "method": "linear",
    "model": "fewshot_chest", "class_names": ["normal", "effusion"], "multi_label": False, "status": "ready",
    "error": None, "created_at": "2026-12-06T09:00:00Z", "finished_at": "2026-12-06T09:00:04Z",
    "provenance": _PROVENANCE,
    "links": {"self": f"/v1/fewshot/tasks/{_TASK_ID}", "job": f"/v1/jobs/{_TASK_ID}",
              "predict": f"/v1/fewshot/tasks/{_TASK_ID}/predict"},
}


class FewshotTaskPublic(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_TASK_EXAMPLE]})

    id: str
    name: str
    encoder: str
    method: str
    model: str = Field(description="the encoder's Triton model")
    class_names: list[str]
    multi_label: bool
    status: Literal["pending", "running", "ready", "failed"]
    error: dict[str, Any] | None = Field(None, description="`type` and `detail` when the adaptation job failed")
    created_at: UtcDatetime
    finished_at: UtcDatetime | None = None
    provenance: dict[str, Any] | None = Field(None, description="encoder (name, model, version, sha256, checkpoint "
                                              "sha256), method, seed, shots per class, support-image sha256s, head "
                                              "sha256; set when the task is ready")
    links: dict[str, str] = Field(default_factory=dict)


class FewshotTasksPublic(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"data": [_TASK_EXAMPLE]}]})

    data: list[FewshotTaskPublic]


class ClassScore(BaseModel):
    name: str
    score: float = Field(ge=0, le=1)


class FewshotPredictionPublic(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "task_id": _TASK_ID, "scores": [{"name": "normal", "score": 0.18}, {"name": "effusion", "score": 0.82}],
        "predicted": ["effusion"], "multi_label": False,
        "model": {"name": "fewshot_chest", "version": "1", "sha256": _SHA}, "provenance": _PROVENANCE,
        "timing": {"encoder_ms": 4.1, "head_us": 21.0}}]})

    task_id: str
    scores: list[ClassScore] = Field(description="one per class, in the task's class order")
    predicted: list[str] = Field(description="the top class; for a multi-label task every class scoring ≥ 0.5")
    multi_label: bool
    model: dict[str, str] = Field(description="the served encoder that ran: name, version, sha256")
    provenance: dict[str, Any]
    timing: dict[str, float] = Field(description="encoder_ms: the Triton call; head_us: the head applied here")


# ---- records -----------------------------------------------------------------------------------


def _visible(db: Session, task_id: str, principal: Principal) -> tuple[FewshotTask, Job | None]:
    task = db.get(FewshotTask, task_id)
    if task is None or not (principal.is_admin or task.api_key_id == principal.id):
        raise Problem(404, "Task not found", f"no few-shot task with id {task_id}", kind="task-not-found")
    return task, db.get(Job, task_id)


def _public(task: FewshotTask, job: Job | None) -> FewshotTaskPublic:
    state = job.state if job is not None else JobState.FAILED
    status_ = STATUS.get(state, "failed")
    if status_ == "ready" and task.head_sha256 is None:
        status_ = "failed"
    error = job.error if job is not None else {"type": "job-missing", "detail": "the adaptation job is gone"}
    if job is not None and job.state == JobState.CANCELLED:
        error = {"type": "cancelled", "detail": "the adaptation job was cancelled"}
    links = {"self": f"/v1/fewshot/tasks/{task.id}", "job": f"/v1/jobs/{task.id}",
             "predict": f"/v1/fewshot/tasks/{task.id}/predict"}
    finished: datetime | None = job.finished_at if job is not None else None
    return FewshotTaskPublic(
        id=task.id, name=task.name, encoder=task.encoder, method=task.method, model=task.model,
        class_names=list(task.class_names), multi_label=task.multi_label, status=status_,  # type: ignore[arg-type]
        error=error if status_ == "failed" else None, created_at=task.created_at, finished_at=finished,
        provenance=task.provenance, links=links)


def _insert_task(task: FewshotTask) -> None:
    """The task row beside its job; the worker may have written it first (then it is kept)."""
    with session_factory()() as db:
        if db.get(FewshotTask, task.id) is not None:
            return
        db.add(task)
        try:
            db.commit()
        except IntegrityError:
            db.rollback()


def _insert_and_show(task: FewshotTask, principal: Principal) -> dict[str, Any]:
    _insert_task(task)
    with session_factory()() as db:
        return _public(*_visible(db, task.id, principal)).model_dump(mode="json")


# ---- register ----------------------------------------------------------------------------------


def _problem(error: Any, status_code: int = 422) -> Problem:
    """A SupportError as problem+json: its code is the type, its extra fields go along."""
    titles = {"unknown-encoder": "Unknown encoder", "unknown-method": "Unknown method",
              "method-needs-text-encoder": "Method needs a text encoder", "wrong-input-kind": "Wrong input kind",
              "unreadable-image": "Unreadable image", "class-without-examples": "Class without examples",
              "labels-name-missing-files": "labels.csv names missing files"}
    return Problem(status_code, titles.get(error.code, "Invalid support set"), error.detail, kind=error.code,
                   **error.extra)


def _check_request(encoder: str, method: str) -> Any:
    from services.fewshot.job import check_request
    from services.fewshot.support import SupportError

    try:
        return check_request(encoder, method)
    except SupportError as error:
        raise _problem(error) from error


TASK_ANSWER_RESPONSES = {
    200: {"description": "Replay of an earlier request with the same Idempotency-Key: the same task",
          "model": FewshotTaskPublic},
    202: {"description": "Task registered, adaptation job queued",
          "headers": {"Location": {"schema": {"type": "string"}}}},
}


def _sniff_zip(head: bytes) -> str:
    if head[:4] == b"PK\x03\x04":
        return ".zip"
    raise unsupported("the support set is a zip of images with labels.csv (header file,label)")


async def _save_support(upload: UploadFile, directory: Path, class_names: list[str], multi_label: bool) -> SavedInput:
    from services.fewshot.support import SupportError, read_support

    saved = await save_stream(chunks_of(upload), directory, "input", max_upload_bytes(), sniff=_sniff_zip)
    await run_in_threadpool(inspect_zip, directory / saved.name, archive_limits())
    try:
        await run_in_threadpool(read_support, directory / saved.name, class_names, multi_label)
    except SupportError as error:
        raise _problem(error) from error
    return saved


@router.post(
    "/tasks", status_code=status.HTTP_202_ACCEPTED, response_model=FewshotTaskPublic,
    summary="Register a few-shot task: encoder, method, classes and a labelled support zip",
    description="Queues the adaptation job; the task is listed at once with `status` pending, then ready (or "
                "failed with a typed `error`). The job is also `GET /v1/jobs/{id}` (same id).",
    dependencies=[require_available(FEWSHOT)],
    openapi_extra=form_body(FewshotTaskCreate, "support set: a zip of images with labels.csv (file,label)",
                            {"file": "(support.zip)", "encoder": "chest", "method": "linear",
                             "class_names": "normal,cardiomegaly,effusion"}),
    responses=problem_responses(400, 409, 413, 415, 422, 503, d422=(
        "unknown-encoder, unknown-method, method-needs-text-encoder, invalid-class-names, missing-labels-csv, "
        "invalid-labels-csv, labels-name-missing-files, unknown-label, class-without-examples, empty-support-set, "
        "support-set-too-large, unsafe-archive, corrupt-archive, validation-error")) | TASK_ANSWER_RESPONSES,
)
async def create_task(request: Request, principal: CurrentKey, store: Store,
                      idempotency_key: IdempotencyKey = None) -> Any:
    from fastapi.responses import JSONResponse

    from services.fewshot.support import SupportError, check_class_names

    async with read_upload(request, FewshotTaskCreate, max_upload_bytes()) as upload:
        form = upload.options
        info = await run_in_threadpool(_check_request, form.encoder, form.method)
        if manifest_of(info.triton_model) is None:
            raise model_missing(info.triton_model)
        try:
            class_names = list(check_class_names(split_csv(form.class_names), form.multi_label))
        except SupportError as error:
            raise _problem(error) from error
        if not isinstance(upload.file, UploadFile):
            raise Problem(422, "Invalid request", "send the support zip as the file part 'file'",
                          kind="validation-error")
        name = form.name or f"{form.encoder} {form.method} ({len(class_names)} classes)"
        params = {"name": name, "encoder": form.encoder, "method": form.method, "class_names": class_names,
                  "multi_label": form.multi_label, "seed": form.seed}
        spec = job_request(FEWSHOT, params, model=info.triton_model, priority=form.priority,
                           idempotency_key=check_idempotency_key(idempotency_key, form.transaction_id))
        file = upload.file
        submitted = await submit(request, principal, spec, store,
                                 lambda d: _save_support(file, d, class_names, form.multi_label))
    job = submitted.job
    task = FewshotTask(id=job.id, name=name, encoder=form.encoder, method=form.method, model=info.triton_model,
                       class_names=class_names, multi_label=form.multi_label, api_key_id=job.api_key_id,
                       input_sha256=job.input_sha256, created_at=job.created_at or utcnow())
    body = await run_in_threadpool(_insert_and_show, task, principal)
    headers = {"Location": body["links"]["self"]}
    if submitted.replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(body, status_code=200 if submitted.replayed else 202, headers=headers)


# ---- list, get, delete -------------------------------------------------------------------------


@router.get("/tasks", summary="Few-shot tasks of this key (all for an admin key), newest first")
def list_tasks(db: DbSession, principal: CurrentKey) -> FewshotTasksPublic:
    query = select(FewshotTask, Job).outerjoin(Job, Job.id == FewshotTask.id)
    if not principal.is_admin:
        query = query.where(FewshotTask.api_key_id == principal.id)
    rows = db.execute(query.order_by(FewshotTask.created_at.desc()).limit(500)).tuples().all()
    return FewshotTasksPublic(data=[_public(task, job) for task, job in rows])


@router.get("/tasks/{task_id}", summary="One few-shot task: status, error, provenance",
            responses=problem_responses(404))
def get_task(task_id: TaskId, db: DbSession, principal: CurrentKey) -> FewshotTaskPublic:
    return _public(*_visible(db, task_id, principal))


@router.delete("/tasks/{task_id}", summary="Delete a task (its head, support set and files; a running job is "
               "cancelled)", status_code=status.HTTP_204_NO_CONTENT, response_class=Response,
               responses=problem_responses(404))
def delete_task(task_id: TaskId, db: DbSession, principal: CurrentKey, store: Store) -> Response:
    task, job = _visible(db, task_id, principal)
    if job is not None and job.state not in JobState.FINAL:
        job.state, job.stage, job.finished_at = JobState.CANCELLED, "cancelled", utcnow()
    db.delete(task)
    db.commit()
    shutil.rmtree(store.root / "jobs" / task_id, ignore_errors=True)  # the support images go with the task
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# ---- predict -----------------------------------------------------------------------------------

_HEADS: OrderedDict[str, Any] = OrderedDict()  # head sha256 → heads.Head (a few KB each)
_HEADS_LOCK = threading.Lock()
MAX_CACHED_HEADS = 256


def _head(task: FewshotTask) -> Any:
    from services.fewshot.heads import Head

    key = task.head_sha256 or ""
    with _HEADS_LOCK:
        if key in _HEADS:
            _HEADS.move_to_end(key)
            return _HEADS[key]
    head = Head.from_bytes(task.head or b"")
    with _HEADS_LOCK:
        _HEADS[key] = head
        while len(_HEADS) > MAX_CACHED_HEADS:
            _HEADS.popitem(last=False)
    return head


def _ready_task(task_id: str, principal: Principal) -> tuple[FewshotTask, Any]:
    """The task and its head; 409 unless the task is ready."""
    with session_factory()() as db:
        task, job = _visible(db, task_id, principal)
        public = _public(task, job)
        if public.status != "ready":
            raise Problem(409, "Task not ready", f"task {task_id} is {public.status}"
                          + (f" ({public.error['type']}: {public.error['detail']})" if public.error else "")
                          + ("; wait until its status is ready" if public.status in ("pending", "running")
                             else "; register the task again with a corrected support set"),
                          kind="task-not-ready", task_status=public.status)
        return task, _head(task)


def _same_encoder(task: FewshotTask, served: dict[str, Any]) -> None:
    """The head fits only the encoder it was adapted on: refuse when the served one has other weights."""
    adapted = (task.provenance or {}).get("encoder", {})
    ours, theirs = adapted.get("checkpoint_sha256"), (served.get("checkpoint") or {}).get("sha256")
    same = ours == theirs if ours and theirs else adapted.get("sha256") == served.get("sha256")
    if not same:
        raise Problem(409, "Encoder changed", f"task {task.id} was adapted on {task.model} version "
                      f"{adapted.get('version')}; the served version {served.get('version')} has other weights. "
                      "Register the task again to adapt it to the served encoder", kind="encoder-changed",
                      adapted_version=adapted.get("version"), served_version=str(served.get("version")))


def _prepare(encoder: str, input_kind: str, data: bytes) -> np.ndarray:
    from services.fewshot.job import prepare
    from services.fewshot.support import SupportError, read_image

    try:
        return prepare(encoder, *read_image(input_kind, data, "the image"))
    except SupportError as error:
        if error.code == "wrong-input-kind" and "unknown format" in error.detail:
            raise unsupported(error.detail) from error
        raise _problem(error) from error
    except ValueError as error:  # the encoder's preprocessing refused the decoded image
        raise Problem(422, "Unreadable image", f"the image: {error}", kind="unreadable-image") from error


def _scores(head: Any, features: np.ndarray) -> tuple[np.ndarray, float]:
    from services.fewshot.heads import apply

    started = time.perf_counter_ns()
    scores = np.asarray(apply(head, features), dtype=np.float64)
    return scores, (time.perf_counter_ns() - started) / 1e3


@router.post(
    "/tasks/{task_id}/predict", summary="Class scores for one image (encoder on Triton, the task's head here)",
    openapi_extra=form_body(FewshotPredictCreate, "the image: PNG/JPEG/DICOM radiograph, or a .npy/NIfTI HU patch",
                            {"file": "(chest_pa.png)"}),
    responses=problem_responses(404, 409, 413, 415, 422, 502, 503, 504, d409=(
        "task-not-ready (pending, running or failed); encoder-changed (the served encoder has other weights)"),
        d422="wrong-input-kind, unreadable-image"),
)
async def predict(task_id: TaskId, request: Request, principal: CurrentKey, triton: Triton) -> FewshotPredictionPublic:
    task, head = await run_in_threadpool(_ready_task, task_id, principal)
    audit_info(request).job_id = task_id
    served = manifest_of(task.model)
    if served is None:
        raise model_missing(task.model)
    _same_encoder(task, served)
    from services.fewshot.encoders import ENCODERS

    info = ENCODERS.get(task.encoder)
    if info is None:
        raise model_missing(task.model)
    max_bytes = min(settings.max_upload_mb, MAX_PREDICT_UPLOAD_MB) << 20
    async with read_upload(request, FewshotPredictCreate, max_bytes) as upload:
        data = await upload.file.read()  # type: ignore[union-attr]
    x = await run_in_threadpool(_prepare, task.encoder, info.input_kind, data)
    prompt = head.prompt if head.prompt is not None else np.zeros_like(x)
    started = time.perf_counter()
    try:
        result = await triton.infer(task.model, {"image": x[None].astype(np.float32),
                                                 "prompt": np.asarray(prompt, np.float32)[None]},
                                    ["features"], request_id=getattr(request.state, "request_id", ""))
    except TritonError as error:
        raise triton_problem(error, task.model) from error
    encoder_ms = (time.perf_counter() - started) * 1e3
    features = result.outputs.get("features")
    if features is None or features.size != info.feature_dim:
        raise Problem(502, "Empty output", f"{task.model} returned no features", kind="empty-output")
    scores, head_us = _scores(head, features.reshape(1, -1))
    row = np.clip(scores.reshape(-1), 0.0, 1.0)
    names = list(task.class_names)
    predicted = [n for n, s in zip(names, row, strict=True) if s >= 0.5] if task.multi_label \
        else [names[int(np.argmax(row))]]
    model = provenance(task.model, result.version)
    audit_info(request).model_used(model["name"], model["version"], model["sha256"] or None)
    return FewshotPredictionPublic(
        task_id=task.id, scores=[ClassScore(name=n, score=float(s)) for n, s in zip(names, row, strict=True)],
        predicted=predicted, multi_label=task.multi_label, model=model, provenance=task.provenance or {},
        timing={"encoder_ms": round(encoder_ms, 3), "head_us": round(head_us, 1)})

