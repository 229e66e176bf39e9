"""Liveness, readiness and Prometheus metrics.

``/livez`` and ``/readyz`` answer without a key: they are probes (``medstack status``, compose and
Kubernetes health checks) and say no more than which dependency is down and which capabilities of
the registry (``core/capabilities.py``) can run. ``/metrics`` needs a key with the ``metrics`` scope
(Prometheus sends it as a bearer token).
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from core.keys import Scope
from core.settings import settings
from gateway import broker
from gateway.auth import require
from gateway.capabilities import availability
from gateway.catalog import manifests
from gateway.deps import Triton
from gateway.observability import registry
from gateway.problems import Problem, problem_responses
from gateway.records import database_ok
from gateway.schemas import Liveness, Readiness

router = APIRouter(tags=["health"])


@router.get("/livez", summary="The gateway process answers (no key needed)")
def livez() -> Liveness:
    return Liveness(status="ok")


@router.get(
    "/readyz", summary="Triton, broker, database and models are all usable (no key needed)",
    responses=problem_responses(503, d503="Something the gateway needs is down; `checks` says what"),
)
async def readyz(triton: Triton) -> Readiness:
    triton_ok, broker_ok, db_ok, capabilities = await asyncio.gather(
        triton.ready(timeout_s=1.0), broker.reachable(), run_in_threadpool(database_ok),
        run_in_threadpool(availability))
    checks = {"triton": triton_ok, "broker": broker_ok, "database": db_ok, "models": bool(manifests())}
    if not all(checks.values()):
        failing = ", ".join(k for k, ok in checks.items() if not ok)
        raise Problem(503, "Not ready", f"not ready: {failing}", kind="not-ready",
                      headers={"Retry-After": str(settings.retry_after_s)}, checks=checks, capabilities=capabilities)
    return Readiness(status="ready", checks=checks, capabilities=capabilities)


@router.get(
    "/metrics", summary="Prometheus metrics (scope: metrics)", dependencies=[require(Scope.METRICS)],
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}, "example": (
        '# TYPE medstack_http_requests_total counter\n'
        'medstack_http_requests_total{method="GET",route="/v1/jobs/{job_id}",status="200"} 42.0\n')}}},
        **problem_responses(401, 403, 429)},
)
def metrics() -> Response:
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
