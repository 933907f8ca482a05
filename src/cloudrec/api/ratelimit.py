"""Sliding-window rate limits: at most ``limit`` calls in any second, per key."""

from __future__ import annotations

import time
from collections import deque
from typing import Callable, Hashable

from cloudrec.errors import RateLimited


class RateLimiter:
    def __init__(self, limit: int, window_s: float = 1.0, clock: Callable[[], float] = time.monotonic):
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
            raise RateLimited(f"too many requests: {what} is limited to {self.limit} per second")
        calls.append(now)
        if len(self._calls) > 10_000:
            self._sweep(now)

    def _sweep(self, now: float) -> None:
        stale = [k for k, d in self._calls.items() if not d or now - d[-1] >= self.window_s]
        for key in stale:
            del self._calls[key]
