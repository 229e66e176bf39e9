"""Which capabilities can run now, judged from the registry (``core/capabilities.py``).

A capability can run when every one of its ``models`` is in the model repository, at least one of
its ``model_choices`` is, and its worker task is installed. Otherwise its routes answer 503
``model-missing`` naming the model (not 404, not 500: the route exists, the deployment lacks a
piece) or ``worker-task-missing`` naming the task. The gateway submits by task *name*
(``celery_app.send_task``), so the contract with a worker is only: a Celery task of that name taking
``job_id``, reading ``job.params``.
"""

from __future__ import annotations

import ast
import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends

from core.capabilities import CAPABILITIES, Capability
from gateway.auth import require
from gateway.catalog import manifests
from gateway.problems import Problem, problem_responses


def model_missing(model: str) -> Problem:
    return Problem(503, "Model missing", f"model {model} is not built; export it (`medstack export {model}`) "
                   "and restart Triton, or ask the operator", kind="model-missing", model=model)


def task_missing(capability: Capability) -> Problem:
    return Problem(503, "Worker task missing", f"{capability.name} worker task not installed "
                   f"({capability.task}); this deployment cannot run {capability.name} jobs yet",
                   kind="worker-task-missing", task=capability.task)


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


def served_choices(capability: Capability) -> list[str]:
    """The capability's ``model_choices`` that are served, in order of preference (the first is the default)."""
    present = manifests()
    return [name for name in capability.model_choices if name in present]


def chosen_model(capability: Capability, wanted: str | None) -> str:
    """The served choice a request names, or the preferred one; 422 ``unknown-model`` for another name."""
    available = served_choices(capability)
    if not available:
        raise model_missing(capability.model_choices[0])
    chosen = wanted or available[0]
    if chosen not in available:
        raise Problem(422, "Unknown model", f"model {chosen!r} is not a served {capability.name} model; "
                      f"choose from {', '.join(available)}", kind="unknown-model")
    return chosen


def unavailable(capability: Capability) -> Problem | None:
    """The 503 the capability answers now, or None when it can run."""
    present = manifests()
    for model in capability.models:
        if model not in present:
            return model_missing(model)
    if capability.model_choices and not served_choices(capability):
        return model_missing(capability.model_choices[0])
    if capability.task is not None and not task_installed(capability.task):
        return task_missing(capability)
    return None


def availability() -> dict[str, bool]:
    """``{capability name: can run now}`` for every capability of the registry (``/readyz``)."""
    return {c.name: unavailable(c) is None for c in CAPABILITIES}


def require_available(capability: Capability) -> Any:
    """Dependency: 503 unless the capability's models are built and its worker task is installed."""

    def _check() -> None:
        problem = unavailable(capability)
        if problem is not None:
            raise problem

    return Depends(_check)


def capability_router(capability: Capability, tag: str, *, whole: bool = False) -> APIRouter:
    """The router of a capability's routes: prefix and scope from the registry; with ``whole``, every
    route also needs the capability available (otherwise each route that needs it says so)."""
    dependencies = [require(capability.scope), *([require_available(capability)] if whole else [])]
    return APIRouter(prefix=capability.route_prefix, tags=[tag], dependencies=dependencies,
                     responses=problem_responses(401, 403, 429, *([503] if whole else [])))
