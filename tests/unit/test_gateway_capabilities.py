"""What the gateway derives from the capability registry (core/capabilities.py): 503s, the model a
segmentation job runs, /readyz availability, GET /v1/models grouping, routes, and docs/api.md's table."""

from __future__ import annotations

import re
from typing import Any

import pytest
from tritonclient.utils import InferenceServerException

from core.capabilities import CAPABILITIES, DIALOGUE, MEDLSAM, SEGMENTATION, markdown_table
from core.settings import REPO_ROOT
from gateway import capabilities
from gateway.problems import Problem
from gateway.triton_client import TritonRejected, TritonTimeout, TritonUnavailable, triton_problem

MANIFEST = {"version": 1, "sha256": "0" * 64, "inputs": [], "outputs": []}


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Pretend these models are in the repository."""

    def serve(*names: str) -> None:
        monkeypatch.setattr(capabilities, "manifests", lambda: {n: MANIFEST for n in names})

    return serve


def test_docs_capability_table_is_the_registry_rendered() -> None:
    text = (REPO_ROOT / "docs" / "api.md").read_text()
    found = re.search(r"<!-- capability table: begin[^\n]*-->\n(.*?)<!-- capability table: end -->", text, re.S)
    assert found, "docs/api.md lost its capability table markers"
    assert found.group(1) == markdown_table(), "regenerate the table: core.capabilities.markdown_table()"


def test_every_model_must_be_served_and_one_of_the_choices(served: Any) -> None:
    served("segmentation_medlsam")
    problem = capabilities.unavailable(MEDLSAM)
    assert problem is not None and (problem.kind, problem.extra["model"]) == ("model-missing", "localization_medlam")
    served()
    problem = capabilities.unavailable(SEGMENTATION)
    assert problem is not None and problem.extra["model"] == SEGMENTATION.model_choices[0]
    served(SEGMENTATION.model_choices[-1])
    assert capabilities.unavailable(SEGMENTATION) is None
    assert capabilities.unavailable(DIALOGUE) is not None


def test_segmentation_model_choice(served: Any) -> None:
    served(*SEGMENTATION.model_choices)
    assert capabilities.chosen_model(SEGMENTATION, None) == SEGMENTATION.model_choices[0]
    assert capabilities.chosen_model(SEGMENTATION, "reference_hutissue") == "reference_hutissue"
    with pytest.raises(Problem) as refused:
        capabilities.chosen_model(SEGMENTATION, "dialogue_generate")
    assert (refused.value.status, refused.value.kind) == (422, "unknown-model")


def test_readiness_lists_every_capability(served: Any) -> None:
    served("reference_hutissue", "report_generate")
    available = capabilities.availability()
    assert list(available) == [c.name for c in CAPABILITIES]
    assert available["report"] and not available["dialogue"] and not available["localization"]


def test_every_worker_task_of_the_registry_is_installed() -> None:
    assert [c.task for c in CAPABILITIES if c.task and not capabilities.task_installed(c.task)] == []


def test_routes_follow_the_registry() -> None:
    from gateway.main import app

    paths = list(app.openapi()["paths"])
    for capability in CAPABILITIES:
        assert any(path.startswith(capability.route_prefix) for path in paths), capability.name


def test_models_are_grouped_by_capability() -> None:
    from gateway.api.routes.models import _public

    assert _public("localization_medlam", MANIFEST, None).capabilities == [
        "localization templates", "localization", "medlsam"]
    assert _public("report_encoder", MANIFEST, None).capabilities == []


@pytest.mark.parametrize(("error", "status", "kind"), [
    (TritonUnavailable("down"), 503, "triton-unavailable"),
    (TritonTimeout("slow"), 504, "upstream-timeout"),
    (TritonRejected("bad shape\nmore"), 422, "inference-rejected"),
    (InferenceServerException("gone", status="StatusCode.UNAVAILABLE"), 503, "triton-unavailable"),
    (InferenceServerException("model crashed"), 503, "generation-failed"),
])
def test_one_mapping_from_triton_errors_to_problems(error: Exception, status: int, kind: str) -> None:
    problem = triton_problem(error, "dialogue_generate")  # type: ignore[arg-type]
    assert (problem.status, problem.kind) == (status, kind)
    assert status != 503 or kind == "generation-failed" or "Retry-After" in problem.headers
    if isinstance(error, TritonRejected):
        assert problem.detail == "bad shape"
