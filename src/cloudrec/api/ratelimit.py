"""Sliding-window rate limits: at most ``limit`` calls in any window (a second), per key.

:class:`RateLimiter` counts in this process (one node alone); :class:`RedisRateLimiter` counts
in Redis, so a cluster's nodes share one limit per key. Both answer ``await check(key, what)``,
raising 2105 past the limit, so the API awaits either the same way.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import deque
from typing import Any, Callable, Hashable

from cloudrec.errors import RateLimited

log = logging.getLogger(__name__)


def _message(what: str, limit: int, window_s: float) -> str:
    per = "second" if window_s == 1.0 else f"{window_s:g} seconds"
    return f"too many requests: {what} is limited to {limit} per {per}"


class RateLimiter:
    """In-process limits: a deque of call times per key."""

    def __init__(self, limit: int, window_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        self.limit = limit
        self.window_s = window_s
        self.clock = clock
        self._calls: dict[Hashable, deque[float]] = {}

    def hit(self, key: Hashable, what: str) -> None:
        """Count a call for ``key``; raise 2105 when it is over the limit."""
        now = self.clock()
        calls = self._calls.setdefault(key, deque())
        while calls and now - calls[0] >= self.window_s:
            calls.popleft()
        if len(calls) >= self.limit:
            raise RateLimited(_message(what, self.limit, self.window_s))
        calls.append(now)
        if len(self._calls) > 10_000:
            self._sweep(now)

    async def check(self, key: Hashable, what: str) -> None:
        """:meth:`hit`, awaitable like :meth:`RedisRateLimiter.check`."""
        self.hit(key, what)

    async def close(self) -> None:
        """Nothing to release (like :meth:`RedisRateLimiter.close`)."""

    def _sweep(self, now: float) -> None:
        stale = [k for k, d in self._calls.items() if not d or now - d[-1] >= self.window_s]
        for key in stale:
            del self._calls[key]


# One sorted set per key, scored by call time in microseconds of the Redis server's clock (one
# clock for every node, whatever their own clocks say). Trimming, counting and adding run in
# one script, so concurrent checks from any number of nodes never admit more than ``limit``.
# A call at exactly ``window`` ago no longer counts, as in RateLimiter.
_SLIDING_WINDOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= limit then
    return 0
end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000) + 1000)
return 1
"""


class RedisRateLimiter:
    """Limits shared by every node using the Redis at ``redis_url``.

    Keys are strings in Redis: a tuple key is joined with ``:``. ``namespace`` separates
    limiters that count different things under the same keys (the API's writes and queries)."""

    def __init__(
        self,
        redis_url: str,
        limit: int,
        window_s: float = 1.0,
        *,
        namespace: str = "cloudrec:ratelimit",
        client: Any = None,
    ) -> None:
        import redis.asyncio
        import redis.exceptions

        self.limit = limit
        self.window_s = window_s
        self.namespace = namespace
        # health_check_interval: a pooled connection idle for a while is pinged before use,
        # so one left from before a Redis restart is replaced instead of failing a call
        self._client = client if client is not None else redis.asyncio.Redis.from_url(
            redis_url, socket_timeout=2.0, socket_connect_timeout=2.0, health_check_interval=5)
        self._redis_errors: tuple[type[BaseException], ...] = (redis.exceptions.RedisError,)
        self._warned_at = 0.0
        self._owns_client = client is None
        self._script = self._client.register_script(_SLIDING_WINDOW)

    def redis_key(self, key: Hashable) -> str:
        parts = key if isinstance(key, tuple) else (key,)
        return ":".join([self.namespace, *(str(p) for p in parts)])

    async def check(self, key: Hashable, what: str) -> None:
        """Count a call for ``key`` across the cluster; raise 2105 when it is over the limit."""
        # A unique member per call: two calls in the same microsecond both count.
        try:
            allowed = await self._script(
                keys=[self.redis_key(key)],
                args=[int(self.window_s * 1_000_000), self.limit, uuid.uuid4().hex],
            )
        except self._redis_errors as exc:
            # Redis is down or restarting: the call is let through rather than refused, so a
            # limiter's outage never stops recordings from being started, stopped or queried
            now = time.monotonic()
            if now - self._warned_at > 10.0:
                self._warned_at = now
                log.warning("rate limit not checked, Redis is unavailable (%s): calls are "
                            "let through until it answers", exc)
            return
        if not int(allowed):
            raise RateLimited(_message(what, self.limit, self.window_s))

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()
