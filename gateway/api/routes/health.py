"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

import redis
from fastapi import APIRouter
from sqlalchemy import text

from gateway.catalog import manifests
from gateway.problems import Problem
from medstack.db import session_factory
from medstack.settings import settings
from medstack.triton import http_ready

router = APIRouter(tags=["health"])


@router.get("/livez", summary="The gateway process answers")
def livez() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Triton, broker, database and models are all usable")
def readyz() -> dict[str, Any]:
    checks = {
        "triton": http_ready(f"http://{settings.triton_http_url}/v2/health/ready"),
        "broker": _redis_ok(),
        "database": _db_ok(),
        "models": bool(manifests()),
    }
    if not all(checks.values()):
        failing = ", ".join(k for k, ok in checks.items() if not ok)
        raise Problem(503, "Not ready", f"not ready: {failing}", headers={"Retry-After": "5"}, checks=checks)
    return {"status": "ready", "checks": checks}


def _redis_ok() -> bool:
    try:
        return bool(redis.Redis.from_url(settings.redis_url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def _db_ok() -> bool:
    try:
        with session_factory()() as db:
            db.execute(text("SELECT 1"))
        return True
    except Exception:  # any driver error means not ready
        return False
