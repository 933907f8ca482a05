"""API throughput and latency: applyrecord and queryrecord against a running server."""

from __future__ import annotations

import asyncio

import loadgen
from common import HEADERS, ServerProcess


def run(server: ServerProcess, roomid: str, recordid: str, requests: int = 2000,
        concurrency: int = 16) -> list[str]:
    out = []
    for name, method, url, body in [
        ("applyrecord", "POST", server.api("applyrecord"), {}),
        ("queryrecord", "GET", server.api(f"queryrecord/{roomid}/{recordid}"), None),
    ]:
        r = asyncio.run(loadgen.load(url, loadgen.build_request(method, url, HEADERS, body),
                                     requests, concurrency))
        out.append(f"api {name:12s} {r['rps']:8.0f} req/s   p50 {r['p50_ms']:6.2f} ms   "
                   f"p99 {r['p99_ms']:6.2f} ms   success {r['ok']:.0%}  "
                   f"({requests} requests, {concurrency} concurrent, 1 server process)")
    return out
