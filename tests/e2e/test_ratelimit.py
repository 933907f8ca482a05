"""Rate limits: the in-process sliding window and the same window shared through a real Redis
by several limiters (as by a cluster's nodes)."""

from __future__ import annotations

import asyncio

import pytest

from cloudrec.api.ratelimit import RateLimiter, RedisRateLimiter
from cloudrec.errors import RateLimited


async def admitted(limiter: RateLimiter | RedisRateLimiter, key: object, n: int) -> int:
    """How many of ``n`` checks for ``key`` pass."""
    passed = 0
    for _ in range(n):
        try:
            await limiter.check(key, "startrecord per AppID")  # type: ignore[arg-type]
            passed += 1
        except RateLimited:
            pass
    return passed


async def test_in_process_window_slides() -> None:
    now = [100.0]
    limiter = RateLimiter(3, clock=lambda: now[0])
    assert await admitted(limiter, (1, "start"), 5) == 3
    with pytest.raises(RateLimited) as err:
        limiter.hit((1, "start"), "start per AppID")
    assert err.value.code == 2105 and "3 per second" in str(err.value)
    assert await admitted(limiter, (2, "start"), 5) == 3  # another key has its own window
    now[0] += 0.5
    assert await admitted(limiter, (1, "start"), 1) == 0
    now[0] += 0.5  # exactly a window after the first calls: they no longer count
    assert await admitted(limiter, (1, "start"), 5) == 3


async def test_redis_limit_is_shared_across_limiters(redis_url: str) -> None:
    nodes = [RedisRateLimiter(redis_url, 5) for _ in range(2)]
    try:
        key = (10034, "startrecord")
        passed = 0
        for i in range(8):
            try:
                await nodes[i % 2].check(key, "startrecord per AppID")
                passed += 1
            except RateLimited as exc:
                assert exc.code == 2105 and "5 per second" in str(exc)
        assert passed == 5
        with pytest.raises(RateLimited):
            await nodes[1].check(key, "startrecord per AppID")
        # Another key, and the same key in another namespace, count apart.
        assert await admitted(nodes[0], (10034, "stoprecord"), 5) == 5
        other = RedisRateLimiter(redis_url, 5, namespace="cloudrec:queries")
        assert await admitted(other, key, 6) == 5
        await other.close()
        await asyncio.sleep(1.05)  # the window slid past every call
        assert await admitted(nodes[1], key, 7) == 5
    finally:
        for node in nodes:
            await node.close()


async def test_redis_limit_holds_under_concurrent_checks(redis_url: str) -> None:
    nodes = [RedisRateLimiter(redis_url, 10, window_s=5.0) for _ in range(3)]
    try:
        results = await asyncio.gather(
            *(nodes[i % 3].check("q:rec1", "query per recordid") for i in range(60)),
            return_exceptions=True,
        )
        assert sum(r is None for r in results) == 10
        assert all(isinstance(r, RateLimited) and r.code == 2105 for r in results if r is not None)
    finally:
        for node in nodes:
            await node.close()


async def test_redis_limit_lets_calls_through_while_redis_is_down_and_recovers() -> None:
    """A limiter whose Redis goes away never refuses (no 2104 for a stoprecord), and counts
    again as soon as a Redis answers on its address, with no stale connection failing a call."""
    import subprocess
    import time

    import redis

    from tests.services import _redis_bin, start_redis

    url, stop = start_redis()
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    limiter = RedisRateLimiter(url, 2, window_s=1.0, namespace="restart")
    second = None
    try:
        assert await admitted(limiter, "app", 3) == 2
        stop()
        began = asyncio.get_running_loop().time()
        assert await admitted(limiter, "app", 3) == 3  # let through while Redis is gone
        assert asyncio.get_running_loop().time() - began < 10
        second = subprocess.Popen([_redis_bin(), "--port", str(port), "--bind", "127.0.0.1",
                                   "--save", "", "--appendonly", "no"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                redis.Redis.from_url(url, socket_connect_timeout=1).ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "the second redis-server did not start"
                await asyncio.sleep(0.05)
        await asyncio.sleep(1.1)  # past the window
        assert await admitted(limiter, "app", 3) == 2  # counting again, empty Redis
    finally:
        await limiter.close()
        if second is not None:
            second.terminate()
            second.wait(10)
