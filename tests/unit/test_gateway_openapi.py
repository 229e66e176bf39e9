"""The OpenAPI document: every route authenticated (but probes), every error a problem, examples everywhere."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.main import app
from gateway.problems import MEDIA_TYPE

PUBLIC = {"/livez", "/readyz"}


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return app.openapi()


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, item in spec["paths"].items() for method, op in item.items()]


def _has_example(node: Any, spec: dict[str, Any], seen: set[str] | None = None) -> bool:
    seen = seen or set()
    if isinstance(node, dict):
        if "example" in node or "examples" in node:
            return True
        ref = node.get("$ref")
        if isinstance(ref, str) and ref not in seen:
            seen.add(ref)
            target = spec
            for part in ref.removeprefix("#/").split("/"):
                target = target[part]
            return _has_example(target, spec, seen)
        return any(_has_example(v, spec, seen) for v in node.values())
    if isinstance(node, list):
        return any(_has_example(v, spec, seen) for v in node)
    return False


def test_every_route_but_the_probes_needs_a_key(spec: dict[str, Any]) -> None:
    schemes = set(spec["components"]["securitySchemes"])
    assert schemes == {"HTTPBearer", "APIKeyHeader"}
    for path, method, op in operations(spec):
        if path in PUBLIC:
            assert "security" not in op, path
            continue
        assert {next(iter(s)) for s in op.get("security", [])} == schemes, (method, path)
        assert {"401", "403", "429"} <= set(op["responses"]), (method, path)


def test_every_error_is_documented_as_problem_json(spec: dict[str, Any]) -> None:
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    for path, method, op in operations(spec):
        for status, response in op["responses"].items():
            if status.startswith(("4", "5")):
                assert set(response["content"]) == {MEDIA_TYPE}, (method, path, status)


def test_every_operation_has_an_example(spec: dict[str, Any]) -> None:
    for path, method, op in operations(spec):
        success = {k: v for k, v in op["responses"].items() if k.startswith("2")}
        assert _has_example(op.get("requestBody"), spec) or _has_example(success, spec) \
            or _has_example(op.get("parameters"), spec), (method, path)
        assert op.get("summary"), (method, path)


def test_capability_routes_exist(spec: dict[str, Any]) -> None:
    paths = set(spec["paths"])
    for expected in ("/v1/segmentation/jobs", "/v1/localization/templates", "/v1/localization/jobs",
                     "/v1/medlsam/jobs", "/v1/reports", "/v1/dialogue/sessions",
                     "/v1/dialogue/sessions/{session_id}/messages", "/v1/valuation/jobs", "/v1/jobs/{job_id}",
                     "/v1/jobs/{job_id}/artifacts/{name}", "/v1/models/{name}/infer", "/metrics"):
        assert expected in paths
