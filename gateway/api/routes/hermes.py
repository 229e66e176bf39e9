"""Hermes jobs (issue #21): universal segmentation, one network for every task; the request names the
tasks (``tasks=liver,spleen``) and the modality (CT or MR).

Needs the Triton model ``hermes_r`` and ``workers.hermes_tasks`` (503 naming what is missing until
then). Scope ``segmentation`` (it returns masks). What can be refused before a job exists is refused
here as a 422 problem (services/hermes/request.py, the same checks the worker repeats): an empty task
list, an unknown task name (the valid ones listed), a task of the other modality, no modality for a
file that carries none.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request, status
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from core.capabilities import HERMES
from gateway.api.forms import form_body, read_upload
from gateway.api.responses import JOB_ANSWER_RESPONSES, job_answer
from gateway.capabilities import capability_router, require_available
from gateway.deps import CurrentKey, IdempotencyKey, Store
from gateway.problems import Problem, problem_responses
from gateway.schemas import JobCreate, JobPublic
from gateway.submission import check_idempotency_key, job_request, submit
from gateway.uploads import SavedInput, max_upload_bytes, save_volume
from services.hermes.request import RequestError, check_tasks, parse_modality_field, resolve_modality, zip_modality
from services.hermes.tasks import TASK_NAMES

router = capability_router(HERMES, "hermes")

VOLUME = ("3D CT (Hounsfield units) or MR: NIfTI (.nii/.nii.gz), NRRD, MetaImage (.mha) or a zip of a DICOM CT or "
          "MR series")


class HermesJobCreate(JobCreate):
    """Form fields of a Hermes job; query parameters when the volume is the raw body."""

    tasks: str = Field("", max_length=2000, examples=["liver,spleen"], description=(
        "comma-separated task names, one mask each, in this order; valid: " + ", ".join(TASK_NAMES)))
    modality: str | None = Field(None, max_length=8, examples=["CT"], description=(
        "CT or MR (MRI accepted); for a DICOM series it defaults to the series' Modality, for a file it is "
        "required"))
    series_uid: str | None = Field(None, max_length=64, pattern=r"^[0-9][0-9.]*$",
                                   description="for a zip holding several series: the SeriesInstanceUID to segment")
    allow_modality_mismatch: bool = Field(False, description=(
        "research override: run on an input that does not look like the modality (a DICOM series of another "
        "Modality, or a file whose air does not match CT or MR); the result records it"))


def _problem(error: RequestError) -> Problem:
    return Problem(422, "Tasks or modality cannot be served", str(error), kind=error.kind, **error.extra)


def _check_dicom_tasks(path: Path, tasks: list[str], series_uid: str | None) -> None:
    """For a DICOM zip sent without ``modality``: its Modality (headers only) decides the task check.
    When the headers do not say (no readable member, several modalities) the worker decides."""
    found = zip_modality(path, series_uid)
    if found is None:
        return
    try:
        check_tasks(tasks, resolve_modality(None, found))
    except RequestError as error:
        raise _problem(error) from None


@router.post(
    "/jobs", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic,
    summary="Segment the requested tasks of a CT or MR volume (Hermes-R; needs hermes_r)",
    description=(
        "Queues a job that runs Hermes-R in 64³ windows of the 3 mm grid (Triton, `hermes_r`) and writes, on the "
        "input's grid (same shape, spacing, origin, direction): `mask.nii.gz` (label map, i + 1 = the i-th "
        "requested task where it is the most probable above 0.5), `mask_<task>.nii.gz` per task (tasks may "
        "overlap), `summary.json` (voxels and mL per task), `preview.png` and, for DICOM input, `seg.dcm`. "
        "`tasks`: comma-separated names (422 `empty-task-list`, `unknown-task` listing the valid ones, "
        "`repeated-task`); `modality`: CT or MR, else the DICOM series' Modality (422 `modality-required` for "
        "a file without it, `unknown-modality`); a task of the other modality is 422 `task-modality-mismatch`. "
        "The network always runs every trained task of the modality and returns the requested ones, so a "
        "task's mask does not depend on what else is requested. Served checkpoint: hermes_noemptydice_s0 "
        "(docs/hermes.md: mean Dice 0.66 over 13 held-out tasks against the multi-head baseline's 0.61; far "
        "below the PCT-Net job on CT organs)."
    ),
    dependencies=[require_available(HERMES)],
    openapi_extra=form_body(HermesJobCreate, VOLUME, {"file": "(ct.nii.gz)", "tasks": "liver,spleen",
                                                      "modality": "CT", "priority": 5},
                            raw_example="(the bytes of ct.nii.gz; tasks and modality as query parameters)"),
    responses={
        **JOB_ANSWER_RESPONSES,
        **problem_responses(400, 409, 413, 415, 422, 503, d503="hermes_r is not built, or the broker is down"),
    },
)
async def create_job(request: Request, principal: CurrentKey, store: Store,
                     idempotency_key: IdempotencyKey = None) -> Any:
    async with read_upload(request, HermesJobCreate, max_upload_bytes(), raw_body=True) as upload:
        form = upload.options
        try:
            modality = parse_modality_field(form.modality)
            tasks = [t.name for t in check_tasks(form.tasks, modality)]
        except RequestError as error:
            raise _problem(error) from None
        params: dict[str, Any] = {"tasks": tasks, "modality": str(modality) if modality else None,
                                  "series_uid": form.series_uid}
        if form.allow_modality_mismatch:
            params["allow_modality_mismatch"] = True

        async def save(directory: Path) -> SavedInput:
            saved = await save_volume(upload.file, directory)
            if modality is None:
                if not saved.name.endswith(".zip"):  # only a DICOM series carries its modality
                    try:
                        resolve_modality(None, None, what=f"a {saved.name.split('.', 1)[-1]} file")
                    except RequestError as error:
                        raise _problem(error) from None
                await run_in_threadpool(_check_dicom_tasks, directory / saved.name, tasks, form.series_uid)
            return saved

        spec = job_request(HERMES, params, priority=form.priority,
                           idempotency_key=check_idempotency_key(idempotency_key, form.transaction_id))
        submitted = await submit(request, principal, spec, store, save)
    return job_answer(submitted, store)

