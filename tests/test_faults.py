"""Faults a real deployment meets: a full disk under ``data_dir``, hostile request bodies."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from cloudrec.rooms import make_token
from tests.helpers import free_port

# -- WHIP bodies --------------------------------------------------------------------------------

WHIP_SERVER = """
import sys, uvicorn
from fastapi import FastAPI
from cloudrec.rooms import RoomHub, whip_router
app = FastAPI()
app.include_router(whip_router(RoomHub(), {10034: "whip-secret"}.get))
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the most resident memory the process ever had."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/PID/status")


@pytest.fixture
def whip_process() -> Iterator[tuple[str, int]]:
    """A WHIP server in its own process, so that its peak memory is its own."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", WHIP_SERVER, str(port)])
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.options(f"{base}/whip/10034/r/u", timeout=1)
                break
            except httpx.HTTPError:
                assert proc.poll() is None and time.monotonic() < deadline, "no WHIP server"
                time.sleep(0.1)
        yield base, proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


async def test_whip_reads_no_more_than_its_limit(whip_process: tuple[str, int]) -> None:
    """A 256 MB chunked offer with a valid token is refused after the first 64 KiB: the
    server's peak memory does not grow with the body."""
    base, pid = whip_process
    url = f"{base}/whip/10034/room1/u1"
    headers = {"Content-Type": "application/sdp",
               "Authorization": f"Bearer {make_token(10034, 'room1', 'u1', 'whip-secret')}"}
    before = peak_rss_mb(pid)
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        chunk = b"a=x-filler:" + b"0" * (1024 * 1024 - 12) + b"\n"
        for _ in range(256):
            sent += len(chunk)
            yield chunk

    async with httpx.AsyncClient(timeout=60) as client:
        # the server answers before the client wrote it all: httpx reads that answer
        response = await client.post(url, content=body(), headers=headers)
    grown = peak_rss_mb(pid) - before
    assert response.status_code == 400 and "too large" in response.text, response.text
    assert grown < 32, f"peak RSS grew {grown:.0f} MB for a {sent >> 20} MB body"
