"""API throughput and latency: applyrecord and queryrecord against a running server."""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import httpx

from common import HEADERS, ServerProcess


async def _load(url: str, method: str, body: Any, requests: int, concurrency: int) -> dict[str, float]:
    latencies: list[float] = []
    codes: dict[int, int] = {}
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(headers=HEADERS, limits=limits, timeout=30) as client:
        async def worker(n: int) -> None:
            for _ in range(n):
                t0 = time.perf_counter()
                r = await client.request(method, url, json=body)
                latencies.append(time.perf_counter() - t0)
                code = r.json()["code"]
                codes[code] = codes.get(code, 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(requests // concurrency) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    latencies.sort()
    return {
        "rps": len(latencies) / wall,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "ok": codes.get(0, 0) / len(latencies),
    }


def run(server: ServerProcess, roomid: str, recordid: str, requests: int = 2000, concurrency: int = 16) -> list[str]:
    out = []
    for name, method, url, body in [
        ("applyrecord", "POST", server.api("applyrecord"), {}),
        ("queryrecord", "GET", server.api(f"queryrecord/{roomid}/{recordid}"), None),
    ]:
        r = asyncio.run(_load(url, method, body, requests, concurrency))
        out.append(f"api {name:12s} {r['rps']:8.0f} req/s   p50 {r['p50_ms']:6.2f} ms   "
                   f"p99 {r['p99_ms']:6.2f} ms   success {r['ok']:.0%}  "
                   f"({requests} requests, {concurrency} concurrent, 1 server process)")
    return out
