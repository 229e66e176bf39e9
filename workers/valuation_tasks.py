"""Data-valuation batch jobs: the one worker task that trains PyTorch models itself.

`score_dataset(job_id)` (queue `batch`) reads the Job row's params (`ValuationParams`, see
docs/valuation.md), loads `params.input` from the job's artifact folder and runs
`services.valuation.job.run_valuation` into that folder. Thin on purpose: the logic and its tests
live in `services/valuation/`.

Running twice is safe. A finished job is not redone (its result is returned). Every training run
checkpoints after each epoch, so a job delivered again after a worker crash resumes from the last
finished epoch and rewrites the same files (write-then-rename), never a second set.

One execution at a time: an exclusive `flock` on `locks/valuation.lock` in the job folder (the OS
drops it when its holder dies, so whoever gets it knows no live process on a host sharing that
folder works on the job and may take over at once), and the worker heartbeat of
`workers.recovery` while running, so the orphan scanner leaves a live job alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded

from core.artifacts import ArtifactStore
from core.db import JobState
from workers.celery_app import celery_app
from workers.job_record import JobCancelled, ProgressRecorder, claim, finish
from workers.recovery import Heartbeat

log = logging.getLogger(__name__)
LOCK = Path("locks") / "valuation.lock"  # in a sub-folder: never listed as a result file


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[bool]:
    """Non-blocking exclusive lock; yields False when another process holds it. The OS drops the
    lock when its holder dies, so a killed worker never leaves the job locked."""
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def job_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The short result kept in the Job row; the full report is `report.json`."""
    from services.valuation.job import OUTPUTS

    runs = report["runs"]
    return {
        "kind": "valuation",
        "artifacts": list(OUTPUTS),
        "dataset": {k: report["dataset"][k] for k in ("name", "train", "test", "sha256")},
        "seeds": report["seeds"],
        "accuracy": {name: {k: run["accuracy"][k] for k in ("mean", "std")} for name, run in runs.items()},
        "kept_fraction": {name: run["kept_fraction"]["mean"] for name, run in runs.items()},
        "coreset_fraction": report["coreset_fraction"]["mean"],
        "claims": report["claims"],
        "wall_seconds": report["wall_seconds"],
    }


@celery_app.task(bind=True, name="workers.valuation_tasks.score_dataset")
def score_dataset(self: Task, job_id: str) -> dict[str, Any] | None:
    return run_job(self, job_id)


def run_job(task: Task, job_id: str) -> dict[str, Any] | None:
    """Run (or resume, or skip when final) valuation job `job_id`."""
    # imported here: the gateway imports this module to see that the task exists, and needs no torch
    from services.valuation.data import DatasetFormatError
    from services.valuation.job import ParamsError, ValuationParams, load_job_dataset, run_valuation

    folder = ArtifactStore().job_dir(job_id)
    (folder / LOCK).parent.mkdir(exist_ok=True)
    with _exclusive(folder / LOCK) as mine:
        if not mine:
            log.warning("job %s: another worker holds it, this delivery is dropped", job_id)
            return None
        claimed = claim(job_id)
        if claimed is None:
            return None
        if claimed.resumed:
            log.warning("job %s: its previous execution died; resuming from the checkpoints", job_id)
        raw = claimed.params
        try:
            with Heartbeat(job_id):
                params = ValuationParams.parse(raw)
                dataset = load_job_dataset(params, folder)
                progress = ProgressRecorder(task, job_id)
                report = run_valuation(dataset, folder, params, progress=progress, keep_work=False)
        except JobCancelled:
            log.info("job %s: cancelled", job_id)
            return None
        except ParamsError as error:
            finish(job_id, JobState.FAILED, error={"type": "invalid-params", "detail": str(error)})
            return None
        except DatasetFormatError as error:
            finish(job_id, JobState.FAILED, error={"type": "invalid-dataset", "detail": str(error)})
            return None
        except FileNotFoundError as error:
            finish(job_id, JobState.FAILED, error={"type": "missing-input", "detail": str(error)})
            return None
        except SoftTimeLimitExceeded:
            detail = ("the job ran past the worker's time limit; its finished epochs are checkpointed in the job "
                      "folder. Submit it again with fewer epochs or seeds, or a smaller dataset.")
            finish(job_id, JobState.FAILED, error={"type": "time-limit", "detail": detail})
            return None
        except Exception as error:
            log.exception("job %s: unexpected failure", job_id)
            finish(job_id, JobState.FAILED, error={"type": "internal-error", "detail": type(error).__name__})
            return None
        summary = job_summary(report)
        finish(job_id, JobState.SUCCEEDED, result=summary)
        log.info("job %s: valuation succeeded in %.0f s", job_id, report["wall_seconds"])
        return summary
