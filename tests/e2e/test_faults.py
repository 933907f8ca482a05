"""Faults a real deployment meets: a full disk under ``data_dir``, hostile request bodies."""

from __future__ import annotations

import asyncio
import errno
import logging
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloudrec.storage import SpoolUploader
from cloudrec.storage.local import LocalStore
from cloudrec.tokens import make_token
from tests.e2e.test_callbacks import Receiver, serving
from tests.e2e.test_recording import publish
from tests.helpers import (
    APPID,
    free_port,
    make_settings,
    running_server,
    source_body,
    startrecord,
)
from tests.media_check import playlist_lines, probe_playlist

# -- WHIP bodies --------------------------------------------------------------------------------

WHIP_SERVER = """
import sys, uvicorn
from fastapi import FastAPI
from cloudrec.api.whip import whip_router
from cloudrec.rooms import RoomHub
from cloudrec.webrtc.ingest import WebRtcIngest
app = FastAPI()
app.include_router(whip_router(WebRtcIngest(RoomHub()), {10034: "whip-secret"}.get))
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


# -- a full disk ----------------------------------------------------------------------------------


def mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"mount {' '.join(args)} failed: {done.stderr.strip()} -- this test needs "
                    "root and a kernel that lets it mount a tmpfs (CI runs it as root)")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 4 MB file system (tmpfs) for ``data_dir``."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mount("-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk))
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> int:
    """Write ballast until the file system has no room left; returns its size."""
    size = 0
    with open(disk / "ballast", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
                size += 65536
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return size


async def poll(call: Any, what: str, until: Any, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        data = await call()
        if until(data):
            return data
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {data}"
        await asyncio.sleep(0.25)


async def test_a_full_disk_fails_the_recording_clearly_and_recovers(
        small_disk: Path, caplog: pytest.LogCaptureFixture) -> None:
    """data_dir on a 4 MB tmpfs, a 640x480 publisher, then the disk fills. Once the task stayed
    "recording" forever, applyrecord answered a bare 500 and the spooled files were never
    stored. Now: the recording fails with a reason that names the disk, the API says so,
    and once the disk has room again (enlarged, no restart) every file is stored, the
    playlist ended, the task marked failed and recording.failed delivered."""
    caplog.set_level(logging.INFO, logger="cloudrec")
    settings = make_settings(small_disk, segment_seconds=1.0, idle_timeout_s=60.0,
                             stop_timeout_s=3.0, write_rate_per_s=1000, query_rate_per_s=1000)
    receiver = Receiver(failures=0)
    async with serving(receiver) as hook, running_server(settings) as server:
        pub = await publish(server, "fullroom", "alice", width=640, height=480)
        try:
            resid = await server.apply()
            started = await startrecord(server.call, source_body(
                resid, "fullroom", "alice", callbackurl=hook))
            assert started["code"] == 0, started
            recordid = started["recordid"]
            query = lambda: server.call(f"queryrecord/fullroom/{recordid}")  # noqa: E731
            await poll(query, "two stored segments",
                       lambda d: d["data"]["segments"] >= 2 and d["data"]["storedfiles"] >= 3, 30)

            fill(small_disk)
            failed = await poll(query, "the disk-full failure",
                                lambda d: "disk full" in (d["data"]["error"] or ""), 30)
            assert failed["data"]["status"] in (3, 5), failed  # stopping, or already failed
            assert "No space left on device" in failed["data"]["error"], failed

            # requests that must write answer the seed's envelope, naming the disk
            for _ in range(100):
                applied = await server.call("applyrecord", {})
                if applied["code"] != 0:
                    break
            assert (applied["code"], applied["_status"]) == (2104, 500), applied
            assert "disk is full" in applied["message"] and applied["traceId"], applied
            stopped = await server.call("stoprecord", {
                "resid": resid, "appid": APPID, "roomid": "fullroom", "recordid": recordid})
            assert (stopped["code"], stopped["_status"]) == (2104, 500), stopped
            assert "disk is full" in stopped["message"], stopped

            mount("-o", "remount,size=20m", str(small_disk))  # room again; no restart
            final = await poll(query, "the task's final state", lambda d: d["code"] == 4013, 60)
            spool = small_disk / "spool" / recordid
            await poll(query, "the spool to empty", lambda d: not spool.exists(), 60)
            assert (await server.call("applyrecord", {}))["code"] == 0
            await poll(lambda: asyncio.sleep(0, [e for e, _, _ in receiver.accepted]),
                       "the closing events",
                       lambda events: {"recording.failed", "recording.stopped"}
                       <= {e["type"] for e in events}, 30)
        finally:
            await pub.stop()
    data = final["data"]
    assert (data["status"], data["stopreason"]) == (5, "error"), data
    assert data["error"].startswith("disk full:"), data
    assert data["pendingfiles"] == 0, data
    event = next(e for e, _, _ in receiver.accepted if e["type"] == "recording.failed")
    assert event["data"]["error"].startswith("disk full:"), event
    playlist = (server.storage_root() / "test1" / "test2"
                / f"{APPID}_fullroom_{recordid}_alice.m3u8")
    lines = playlist_lines(playlist)
    assert lines[-1] == "#EXT-X-ENDLIST", lines
    listed = [line for line in lines if line.endswith(".ts")]
    assert len(listed) >= 2 and all((playlist.parent / n).stat().st_size > 0 for n in listed)
    assert probe_playlist(playlist).duration > 1.0
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("disk is full" in r.getMessage() for r in logged), "a log line names the disk"


async def test_the_uploader_outlives_a_failing_task_store(tmp_path: Path) -> None:
    """The uploader reports to the recording, which writes to the task store; on a full disk
    that write raises. Once, the uploader died of it, silently, with files in its queue."""
    root = tmp_path / "store"
    root.write_text("in the way")  # the store fails until this file is gone
    spool = tmp_path / "spool"
    spool.mkdir()
    reports: list[tuple[Any, ...]] = []

    def task_store_full(*args: Any) -> None:
        reports.append(args)
        raise sqlite3.OperationalError("database or disk is full")

    uploader = SpoolUploader(LocalStore(root / "bucket"), "p/", spool, on_stored=task_store_full,
                             on_error=task_store_full, backoff_s=0.05, max_backoff_s=0.1)
    for i in range(3):
        segment = spool / f"s_{i:05d}.ts"
        segment.write_bytes(bytes([i]) * 1000)
        uploader.submit_segment(segment)
    await asyncio.sleep(0.3)
    root.unlink()
    try:
        assert await uploader.drain(timeout=10), "the uploader stopped with files queued"
    finally:
        await uploader.close()
    assert sorted(p.name for p in (root / "bucket" / "p").iterdir()) == [
        f"s_{i:05d}.ts" for i in range(3)]
    assert any(r[0] is None for r in reports) and len(reports) >= 5  # errors, recovery, stored
