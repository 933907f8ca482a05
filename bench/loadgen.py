"""A minimal HTTP/1.1 keep-alive load generator on raw asyncio streams.

httpx costs a few ms of client CPU per request, which on a 2-core machine makes the client,
not the server, the bottleneck; this one costs tens of microseconds, so the figures are the
server's.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from urllib.parse import urlsplit


def build_request(method: str, url: str, headers: dict[str, str], body: object | None) -> bytes:
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    payload = b"" if body is None else json.dumps(body).encode()
    lines = [f"{method} {path} HTTP/1.1", f"Host: {parts.netloc}", "Connection: keep-alive"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


async def _read_response(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    return await reader.readexactly(length)


async def load(url: str, request: bytes, total: int, concurrency: int) -> dict[str, float]:
    parts = urlsplit(url)
    latencies: list[float] = []
    codes: dict[int, int] = {}

    async def worker(n: int) -> None:
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        try:
            for _ in range(n):
                t0 = time.perf_counter()
                writer.write(request)
                body = await _read_response(reader)
                latencies.append(time.perf_counter() - t0)
                code = json.loads(body)["code"]
                codes[code] = codes.get(code, 0) + 1
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(total // concurrency) for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    latencies.sort()
    return {
        "rps": len(latencies) / wall,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000,
        "ok": codes.get(0, 0) / len(latencies),
    }
