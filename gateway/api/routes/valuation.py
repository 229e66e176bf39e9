"""Data valuation jobs: which images of a dataset are worth labelling and training on.

A batch job on the ``batch`` queue, run by ``workers.valuation_tasks.score_dataset``, which
validates the parameters again (``services.valuation.job.ValuationParams``; the form mirrors
them so a bad value is a 422 now, not a failed job later). Where that module is not installed the
route answers 503 "valuation worker task not installed".

The dataset is an upload (``.npz`` with ``x``/``y`` arrays, or a zip of images with ``labels.csv``)
or one of the built-in sets (``organ_patches``, ``digits``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Request, status
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from core.keys import Scope
from core.settings import settings
from gateway.api.forms import form_body, read_form
from gateway.api.responses import job_answer
from gateway.archives import inspect_zip
from gateway.auth import require
from gateway.capabilities import VALUATION, require_available
from gateway.deps import CurrentKey, IdempotencyKey, Store
from gateway.problems import Problem, problem_responses
from gateway.schemas import JobPublic
from gateway.submission import JobRequest, check_idempotency_key, submit
from gateway.uploads import SavedInput, archive_limits, save_stream, unsupported

router = APIRouter(
    prefix="/v1/valuation", tags=["valuation"], dependencies=[require(Scope.VALUATION)],
    responses=problem_responses(401, 403, 429),
)


class ValuationJobCreate(BaseModel):
    """Form fields; those left out take the worker's defaults (docs/valuation.md)."""

    model_config = ConfigDict(extra="forbid")

    dataset: Literal["upload", "organ_patches", "digits"] = Field(
        "upload", description="'upload': the file part; otherwise a built-in set (then send no file)")
    task: Literal["classification"] = "classification"
    model_family: Literal["small_cnn", "resnet18_w"] = "small_cnn"
    width: int | None = Field(None, ge=2, le=64, description="channels of the first block (default 8)")
    epochs: int | None = Field(None, ge=1, le=200, description="default 12")
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    seeds: int | None = Field(None, ge=1, le=10, description="repeats with seed, seed+1, … (default 3)")
    method: Literal["data_si", "gradnorm", "both"] | None = None
    optimizer: Literal["sgd", "adam"] | None = None
    lr: float | None = Field(None, gt=0, le=10)
    batch_size: int | None = Field(None, ge=8, le=1024)
    test_fraction: float | None = Field(None, ge=0.05, le=0.5)
    threads: int | None = Field(None, ge=1, le=16, description="torch CPU threads in the worker")
    priority: int = Field(5, ge=0, le=9)
    transaction_id: str | None = Field(None, max_length=100)


def _sniff_dataset(head: bytes) -> str:
    if head[:4] == b"PK\x03\x04":
        return ".zip"
    raise unsupported("a dataset is an .npz file or a zip of images with labels.csv")


@router.post(
    "/jobs", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic,
    summary="Score a dataset's samples (Data SI, gradient norm) and select a coreset",
    description="Results: per-sample value table (CSV + JSON), coreset list, and a report comparing full data, "
                "online selection, coreset and a random subset.",
    dependencies=[require_available(VALUATION)],
    openapi_extra=form_body(ValuationJobCreate, "dataset: .npz (x, y) or a zip of images with labels.csv",
                            {"file": "(patches.npz)", "model_family": "small_cnn", "epochs": 12, "seeds": 3},
                            file_required=False),
    responses=problem_responses(400, 409, 413, 415, 422, 503),
)
async def create_job(request: Request, principal: CurrentKey, store: Store,
                     idempotency_key: IdempotencyKey = None) -> Any:
    max_bytes = settings.max_upload_mb << 20
    upload, form, raw = await read_form(request, ValuationJobCreate, max_bytes, file_required=False)
    try:
        if (upload is None) == (form.dataset == "upload"):
            raise Problem(422, "Invalid request", "send a dataset file with dataset='upload', or name a built-in "
                          "dataset without a file", kind="validation-error")

        async def save(directory: Path) -> SavedInput:
            if upload is None:
                return SavedInput("", hashlib.sha256(form.dataset.encode()).hexdigest(), 0)

            async def chunks() -> Any:
                while chunk := await upload.read(1 << 20):
                    yield chunk

            saved = await save_stream(chunks(), directory, "input", max_bytes, sniff=_sniff_dataset)
            summary = await run_in_threadpool(inspect_zip, directory / saved.name, archive_limits())
            if summary.files and summary.npy_files == summary.files:  # every member an array: an .npz
                (directory / saved.name).rename(directory / "input.npz")
                return SavedInput("input.npz", saved.sha256, saved.size)
            return saved

        params = form.model_dump(exclude={"priority", "transaction_id"}, exclude_none=True)
        spec = JobRequest("valuation", form.model_family, form.priority, params,
                          check_idempotency_key(idempotency_key, form.transaction_id), VALUATION.task or "",
                          VALUATION.queue)
        submitted = await submit(request, principal, spec, store, save)
    finally:
        await raw.close()
    return job_answer(submitted, store)
