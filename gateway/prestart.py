"""Start in a safe order: the database answers and is migrated, the bootstrap key is in place,
Triton is waited for (a while), then the gateway serves.

A database that never answers stops the start (nothing works without it). Triton that does not
come up within ``MEDSTACK_TRITON_WAIT_S`` does not: the gateway starts anyway, model routes answer
503 + Retry-After, and ``/readyz`` says ``triton: false`` until it is back.
"""

from __future__ import annotations

import asyncio
import logging
import time

from sqlalchemy.exc import OperationalError
from starlette.concurrency import run_in_threadpool

from core.db import engine_for, schema_revision, session_factory
from core.keys import ensure_bootstrap_key
from core.settings import Settings, settings
from gateway.triton_client import TritonClient

log = logging.getLogger(__name__)


def wait_for_database(timeout_s: float, url: str | None = None) -> str | None:
    """Connect and migrate (retrying while the server is not up); returns the schema revision."""
    url = url or settings.sqlalchemy_url
    deadline = time.monotonic() + timeout_s
    delay = 0.5
    while True:
        try:
            engine = engine_for(url)
            return schema_revision(engine)
        except OperationalError as error:
            if time.monotonic() >= deadline:
                raise RuntimeError(f"the database did not answer within {timeout_s:g} s") from error
            log.warning("database not answering yet (%s); retrying", type(error.orig).__name__)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def install_bootstrap_key(config: Settings) -> None:
    key = config.bootstrap_key.get_secret_value() if config.bootstrap_key else None
    with session_factory().begin() as db:
        ensure_bootstrap_key(db, key)
    if key:
        log.warning("bootstrap admin key from MEDSTACK_BOOTSTRAP_KEY is active (development only)")


async def wait_for_triton(client: TritonClient, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        if await client.ready(timeout_s=1.0):
            return True
        if time.monotonic() >= deadline:
            log.warning("Triton at %s not ready after %g s; starting anyway (model routes answer 503)",
                        client.url, timeout_s)
            return False
        await asyncio.sleep(0.5)


async def run(config: Settings, triton: TritonClient) -> None:
    revision = await run_in_threadpool(wait_for_database, config.database_wait_s)
    log.info("database ready at schema revision %s", revision)
    await run_in_threadpool(install_bootstrap_key, config)
    if await wait_for_triton(triton, config.triton_wait_s):
        log.info("Triton ready at %s", triton.url)
