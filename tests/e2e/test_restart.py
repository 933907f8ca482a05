"""A restart keeps tasks and files: SIGKILL mid-recording resumes the same playlist; SIGTERM
finalises open recordings before the process exits."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import AsyncIterator

import pytest

from tests.helpers import (
    APPID,
    LOCAL_STORAGE,
    free_port,
    seconds_in,
    segments_in,
    source_body,
    startrecord,
    wait_for,
)
from tests.media_check import playlist_lines, probe_playlist
from tests.nodes import Node


class Proc(Node):
    """``cloudrec serve`` as one process (``workers = 1``) on ``port``, started at once: the
    same port and data directory again after a kill is a restart."""

    def __init__(self, data_dir: Path, port: int) -> None:
        super().__init__(data_dir, port, workers=1)
        self.start()


@pytest.fixture
async def procs() -> AsyncIterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in started:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait()


async def start_recording(server: Proc, room: str, uid: str) -> tuple[str, str]:
    resid = (await server.call("applyrecord", {}))["resid"]
    data = await startrecord(server.call, source_body(resid, room, uid))
    assert data["code"] == 0, data
    return resid, data["recordid"]


def stored_playlist(data_dir: Path, room: str, recordid: str, uid: str) -> Path:
    return (data_dir / "storage" / LOCAL_STORAGE["bucket"] / "test1" / "test2"
            / f"{APPID}_{room}_{recordid}_{uid}.m3u8")


async def test_sigkill_resumes_into_the_same_playlist(tmp_path: Path, procs: list[Proc]) -> None:
    port = free_port()
    first = Proc(tmp_path, port)
    procs.append(first)
    await first.ready()
    pub = await first.publisher("room1", "alice")
    resid, recordid = await start_recording(first, "room1", "alice")
    playlist = stored_playlist(tmp_path, "room1", recordid, "alice")
    await wait_for(lambda: len(segments_in(playlist)) >= 2, what="two segments stored")
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait()
    await pub.stop()
    before = [line for line in playlist_lines(playlist) if line.endswith(".ts")]
    assert len(before) >= 2, "segments closed before the crash are stored"
    assert "#EXT-X-ENDLIST" not in playlist_lines(playlist)

    second = Proc(tmp_path, port)
    procs.append(second)
    await second.ready()
    resumed = await second.call(f"queryrecord/room1/{recordid}")
    assert resumed["code"] == 0 and resumed["data"]["status"] in (1, 2), resumed
    pub = await second.publisher("room1", "alice")
    # the frames checked below: two seconds more than the segments before the crash
    await wait_for(lambda: seconds_in(playlist) >= len(before) + 2.5,
                   what="2.5 s more stored after the restart")
    stopped = await second.call("stoprecord", {"resid": resid, "appid": APPID, "roomid": "room1",
                                               "recordid": recordid})
    await pub.stop()
    assert stopped["code"] == 0, stopped
    lines = playlist_lines(playlist)
    after = [line for line in lines if line.endswith(".ts")]
    assert after[: len(before)] == before, "no segment from before the crash is missing"
    assert len(after) > len(before) and "#EXT-X-DISCONTINUITY" in lines
    assert lines[-1] == "#EXT-X-ENDLIST"
    assert all((playlist.parent / name).stat().st_size > 0 for name in after)
    probe = probe_playlist(playlist)
    assert probe.width == 320 and probe.audio_codec == "aac"
    assert probe.video_frames >= 15 * (len(before) + 2)


async def test_sigterm_finalises_and_restart_keeps_the_task(tmp_path: Path,
                                                            procs: list[Proc]) -> None:
    port = free_port()
    first = Proc(tmp_path, port)
    procs.append(first)
    await first.ready()
    pub = await first.publisher("room2", "bob")
    resid, recordid = await start_recording(first, "room2", "bob")
    await asyncio.sleep(2.5)
    t0 = time.monotonic()
    first.proc.send_signal(signal.SIGTERM)
    # uvicorn shuts down gracefully, then re-raises the signal so the exit status tells it
    assert await asyncio.to_thread(first.proc.wait, 30) in (0, -signal.SIGTERM)
    assert time.monotonic() - t0 < 20
    await pub.stop()
    playlist = stored_playlist(tmp_path, "room2", recordid, "bob")
    lines = playlist_lines(playlist)
    assert lines[-1] == "#EXT-X-ENDLIST"
    assert abs(probe_playlist(playlist).duration - 2.5) < 1.2

    second = Proc(tmp_path, port)
    procs.append(second)
    await second.ready()
    query = await second.call(f"queryrecord/room2/{recordid}")
    assert query["code"] == 4013
    assert query["data"]["status"] == 4 and query["data"]["stopreason"] == "shutdown"
    assert query["data"]["segments"] == len([x for x in lines if x.endswith(".ts")])
    again = await second.call("startrecord", source_body(resid, "room2", "bob"))
    assert again["code"] == 4012
