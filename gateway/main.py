"""The MedStack gateway: ``uvicorn gateway.main:app``.

Start-up (lifespan): structured logs, then ``prestart`` (database up and migrated, bootstrap key,
Triton waited for), then the Triton gRPC client, the Redis rate limiter and the audit writer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from core.settings import settings
from gateway import openapi, prestart, problems, ui
from gateway.api.main import api_router
from gateway.audit import AuditWriter
from gateway.middleware import RequestContextMiddleware
from gateway.observability import JobStateCollector, configure_logging, registry
from gateway.ratelimit import RateLimiter
from gateway.records import job_counts
from gateway.triton_client import TritonClient

DESCRIPTION = """\
Medical-imaging foundation models served by NVIDIA Triton.

**Auth**: every route except `/livez` and `/readyz` needs an API key, sent as
`Authorization: Bearer <key>` or `X-API-Key: <key>`; keys have scopes per capability
(`medstack keys create --name N --scopes segmentation,jobs`). 401: no or unknown key;
403: the key lacks the scope; 429: over the key's rate (see `Retry-After`).

**Errors** are `application/problem+json` (RFC 7807) with a stable `type` per kind.
**Jobs**: long work answers `202` with a job; poll `GET /v1/jobs/{id}`; send `Idempotency-Key`
to make a submission safe to repeat. Every request gets an `X-Request-ID`.
"""


def create_app() -> FastAPI:
    audit = AuditWriter() if settings.audit else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings.log_format, settings.log_level)
        triton = TritonClient(settings.triton_grpc_url, settings.triton_call_timeout_s, settings.triton_retries,
                              settings.triton_retry_backoff_s)
        await prestart.run(settings, triton)
        limiter = RateLimiter(settings.redis_url)
        app.state.triton, app.state.rate_limiter = triton, limiter
        if audit is not None:
            audit.start()
        try:
            yield
        finally:
            if audit is not None:
                await audit.stop()
            await limiter.close()
            await triton.close()

    app = FastAPI(title="MedStack", version="0.2.0", description=DESCRIPTION, lifespan=lifespan)
    problems.install(app)
    openapi.install(app)
    app.include_router(api_router)
    app.include_router(ui.router)  # the web viewer at /ui (static files, docs/ui.md)
    app.add_middleware(RequestContextMiddleware, audit=audit)
    return app


registry.register(JobStateCollector(job_counts))
app = create_app()
