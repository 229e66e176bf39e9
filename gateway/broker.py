"""Is the broker (Redis) reachable? Asked before calls whose client would otherwise retry for seconds."""

from __future__ import annotations

import redis.asyncio as aioredis

from core.settings import settings


async def reachable(timeout_s: float = 1.0) -> bool:
    client = aioredis.Redis.from_url(settings.redis_url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        return bool(await client.ping())
    except Exception:  # any connection error means unreachable
        return False
    finally:
        await client.aclose()
