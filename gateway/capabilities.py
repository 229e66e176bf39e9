"""Which capabilities can run now: their model is in the repository and their worker task exists.

A capability whose model is not built answers 503 ``model-missing`` naming the model (not 404,
not 500): the route exists, the deployment lacks a piece. Worker-backed capabilities also need
their task module; the gateway submits by task *name* (``celery_app.send_task``), so the contract
with a worker is only: a Celery task of that name taking ``job_id``, reading ``job.params``.
"""

from __future__ import annotations

import ast
import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastapi import Depends

from gateway.catalog import manifests
from gateway.problems import Problem


@dataclass(frozen=True)
class Capability:
    name: str
    model: str | None
    task: str | None = None  # "module.function" of the Celery task
    queue: str = "volumes"

    @property
    def task_module(self) -> str | None:
        return self.task.rsplit(".", 1)[0] if self.task else None


SEGMENTATION = Capability("segmentation", None, "workers.tasks.segment_volume", "volumes")
LOCALIZATION = Capability("localization", "localization_medlam", "workers.localization_tasks.localize", "volumes")
TEMPLATES = Capability("localization templates", "localization_medlam",
                       "workers.localization_tasks.embed_template", "volumes")
MEDLSAM = Capability("medlsam", "segmentation_medlsam", "workers.localization_tasks.medlsam_segment", "volumes")
REPORT = Capability("report", "report_generate")
DIALOGUE = Capability("dialogue", "dialogue_generate")
VALUATION = Capability("valuation", None, "workers.valuation_tasks.score_dataset", "batch")


def model_missing(model: str) -> Problem:
    return Problem(503, "Model missing", f"model {model} is not built; export it (`medstack export {model}`) "
                   "and restart Triton, or ask the operator", kind="model-missing", model=model)


def task_installed(task: str) -> bool:
    """The task's module exists and defines it, judged from the source: importing a worker module
    would load its whole stack (PyTorch for valuation) into the gateway."""
    module_name, _, attribute = task.rpartition(".")
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        return False
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return False
    path = Path(spec.origin)
    try:
        return _defines(str(path), path.stat().st_mtime_ns, attribute)
    except OSError:
        return False


@lru_cache(maxsize=64)
def _defines(path: str, mtime_ns: int, name: str) -> bool:
    tree = ast.parse(Path(path).read_text(), filename=path)
    return any(isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name for node in tree.body)


def require_available(capability: Capability) -> Any:
    """Dependency: 503 unless the capability's model is built and its worker task is installed."""

    def _check() -> None:
        if capability.model is not None and capability.model not in manifests():
            raise model_missing(capability.model)
        if capability.task is not None and not task_installed(capability.task):
            raise Problem(503, "Worker task missing", f"{capability.name} worker task not installed "
                          f"({capability.task}); this deployment cannot run {capability.name} jobs yet",
                          kind="worker-task-missing", task=capability.task)

    return Depends(_check)


def not_wired(capability: Capability) -> Problem:
    """The model is built but this gateway version has no pipeline for it yet."""
    return Problem(503, "Capability not available",
                   f"model {capability.model} is built but this gateway has no {capability.name} pipeline yet",
                   kind="capability-unavailable", model=capability.model)
