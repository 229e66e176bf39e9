"""Per-key token bucket in Redis, so every gateway process draws from the same bucket.

The bucket refills at ``rate`` tokens per second up to ``burst``; a request takes one token. The
whole read-refill-take step is one Lua script (atomic in Redis) using Redis's clock, so processes
with drifting clocks agree. When Redis does not answer the limiter lets requests through and logs
it: the broker being down already stops job submission, and refusing every read would turn a
Redis blip into an outage.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

_TOKEN_BUCKET = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) + tonumber(now_parts[2]) / 1000000
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return {allowed, tostring(wait), tostring(tokens)}
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after_s: int = 0
    remaining: int = 0


class RateLimiter:
    def __init__(self, redis_url: str) -> None:
        self.client = aioredis.Redis.from_url(redis_url, socket_connect_timeout=0.5, socket_timeout=0.5)
        self.script = self.client.register_script(_TOKEN_BUCKET)

    async def take(self, key_id: str, rate_per_s: float, burst: int) -> Decision:
        if rate_per_s <= 0:
            return Decision(True, remaining=burst)
        try:
            allowed, wait, tokens = await self.script(keys=[f"medstack:ratelimit:{key_id}"], args=[rate_per_s, burst])
        except (RedisError, OSError) as error:
            log.warning("rate limiter unavailable, request let through: %s", type(error).__name__)
            return Decision(True)
        return Decision(bool(int(allowed)), max(1, math.ceil(float(wait))) if not int(allowed) else 0,
                        int(float(tokens)))

    async def close(self) -> None:
        await self.client.aclose()
