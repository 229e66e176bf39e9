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
from typing import Any

from fastapi import Request, status
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from core.capabilities import VALUATION
from gateway.api.forms import form_body, read_upload
from gateway.api.responses import job_answer
from gateway.archives import inspect_zip
from gateway.capabilities import capability_router, require_available
from gateway.deps import CurrentKey, IdempotencyKey, Store
from gateway.problems import Problem, problem_responses
from gateway.schemas import JobPublic, ValuationJobCreate
from gateway.submission import check_idempotency_key, job_request, submit
from gateway.uploads import SavedInput, archive_limits, chunks_of, max_upload_bytes, save_stream, unsupported

router = capability_router(VALUATION, "valuation")


def _sniff_dataset(head: bytes) -> str:
    if head[:4] == b"PK\x03\x04":
        return ".zip"
    raise unsupported("a dataset is an .npz file or a zip of images with labels.csv")


async def save_dataset(upload: UploadFile | None, dataset: str, directory: Path) -> SavedInput:
    """The uploaded dataset (stored as ``input.npz`` when every member is an array), or a built-in set's name."""
    if upload is None:
        return SavedInput("", hashlib.sha256(dataset.encode()).hexdigest(), 0)
    saved = await save_stream(chunks_of(upload), directory, "input", max_upload_bytes(), sniff=_sniff_dataset)
    summary = await run_in_threadpool(inspect_zip, directory / saved.name, archive_limits())
    if summary.files and summary.npy_files == summary.files:  # every member an array: an .npz
        (directory / saved.name).rename(directory / "input.npz")
        return SavedInput("input.npz", saved.sha256, saved.size)
    return saved


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
    async with read_upload(request, ValuationJobCreate, max_upload_bytes(), file_required=False) as upload:
        form = upload.options
        if (upload.file is None) == (form.dataset == "upload"):
            raise Problem(422, "Invalid request", "send a dataset file with dataset='upload', or name a built-in "
                          "dataset without a file", kind="validation-error")
        spec = job_request(VALUATION, form.model_dump(exclude={"priority", "transaction_id"}, exclude_none=True),
                           model=form.model_family, priority=form.priority,
                           idempotency_key=check_idempotency_key(idempotency_key, form.transaction_id))
        submitted = await submit(request, principal, spec, store, lambda d: save_dataset(upload.file, form.dataset, d))
    return job_answer(submitted, store)
