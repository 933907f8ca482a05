"""RTMP publishers recorded like any other: an auto-record rule records one with no recording
API call and stops when it leaves, a mix rule records the room while it publishes, and a source
recording on one makes an MP4 and snapshots across a pause. Debian's FFmpeg pushes to an
in-process node; every file is decoded."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, AsyncIterator

import av
import pytest

from cloudrec.tokens import make_token
from tests.e2e.ingest_push import ENCODE
from tests.e2e.test_autorecord import files_dir, rules_call, tasks_of
from tests.e2e.test_outputs import check_mp4, stop
from tests.helpers import (
    APPID,
    LOCAL_STORAGE,
    SECRET,
    Server,
    file_kinds,
    free_port,
    make_settings,
    query_until,
    running_server,
    seconds_in,
    source_body,
    startrecord,
    wait_for,
)
from tests.media_check import playlist_lines, probe_playlist

pytestmark = pytest.mark.slow


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    settings = make_settings(tmp_path / "data", rtmp_port=free_port(), segment_seconds=1.0)
    async with running_server(settings) as s:
        yield s


async def push(server: Server, room: str, uid: str, seconds: float) -> asyncio.subprocess.Process:
    """FFmpeg pushes a live test source (H.264 constrained baseline, AAC 48 kHz) over RTMP."""
    url = (f"rtmp://127.0.0.1:{server.settings.rtmp_port}/live/{APPID}/{room}/{uid}"
           f"?token={make_token(APPID, room, uid, SECRET)}")
    args = list(ENCODE)
    args[args.index("-t") + 1] = str(seconds)
    return await asyncio.create_subprocess_exec(
        "ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", *args, "-f", "flv", url,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)


async def ended(proc: asyncio.subprocess.Process) -> None:
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode(errors="replace")


async def add_rule(server: Server, **body: Any) -> str:
    added = await rules_call(server, "POST", body={"recordtype": 0, "storagecfg": LOCAL_STORAGE,
                                                   **body})
    assert added["code"] == 0, added
    return str(added["ruleid"])


async def test_rule_records_an_rtmp_publisher_until_it_leaves(server: Server) -> None:
    await add_rule(server, roomid="cam-*", streamtype=2)
    started = asyncio.get_running_loop().time()
    proc = await push(server, "cam-1", "obs", 5)
    task = (await wait_for(lambda: tasks_of(server, "cam-1"), what="a task"))[0]
    assert task.uid == "obs" and task.streamtype == 2
    playlist = files_dir(server) / f"{APPID}_cam-1_{task.recordid}_obs.m3u8"
    await ended(proc)
    pushed = asyncio.get_running_loop().time() - started
    await wait_for(lambda: not server.app.state.front.tasks.get(task.recordid).active,
                   timeout=30, what="the recording stopped when its publisher left")
    assert playlist_lines(playlist)[-1] == "#EXT-X-ENDLIST"
    probe = probe_playlist(playlist)
    assert (probe.video_codec, probe.audio_codec) == ("h264", "aac"), probe
    assert probe.width == 320 and probe.audio_rate == 48000
    # the rule starts on the first frames: nearly the whole push, never more than was sent
    assert 5 - 1.5 <= probe.duration <= min(pushed, 5) + 0.5, (probe, pushed)
    assert probe.video_frames >= probe.duration * 15 - 2, probe
    assert probe.audio_frames >= probe.duration * 46.8 - 3, probe


async def test_mix_rule_records_the_room_while_it_publishes(server: Server) -> None:
    await add_rule(server, roomid="hall", streamtype=1, mixconfig={
        "templateid": 1, "output": {"streamtype": 0, "videowidth": 480, "videoheight": 272,
                                    "videobitrate": 400, "videofps": 15, "videogop": 30}})
    proc = await push(server, "hall", "obs", 6)
    task = (await wait_for(lambda: tasks_of(server, "hall"), what="a mix task"))[0]
    assert task.streamtype == 1
    playlist = files_dir(server) / f"{APPID}_hall_{task.recordid}.m3u8"
    await wait_for(lambda: seconds_in(playlist) >= 2, timeout=40, what="2 s of the mix")
    await ended(proc)
    await wait_for(lambda: not server.app.state.front.tasks.get(task.recordid).active,
                   timeout=30, what="the mix stopped when the room emptied")
    assert playlist_lines(playlist)[-1] == "#EXT-X-ENDLIST"
    probe = probe_playlist(playlist)
    assert probe.video_codec == "h264" and (probe.width, probe.height) == (480, 272), probe
    assert probe.audio_codec == "aac" and probe.audio_rate == 48000, probe
    assert 2 <= probe.duration <= 6.5 and probe.video_frames >= probe.duration * 15 - 3, probe


async def test_source_recording_of_rtmp_with_mp4_snapshots_and_pause(server: Server) -> None:
    proc = await push(server, "live", "obs", 30)
    try:
        await wait_for(server.app.state.hub.publications, timeout=10, what="the publisher")
        resid = await server.apply()
        started = await startrecord(server.call, source_body(
            resid, "live", "obs", outputs={"mp4": True, "snapshotinterval": 5}))
        assert started["code"] == 0, started
        recordid = started["recordid"]
        base = f"{APPID}_live_{recordid}_obs"
        playlist = files_dir(server) / f"{base}.m3u8"
        await wait_for(lambda: seconds_in(playlist) >= 2, timeout=20, what="2 s recorded")
        ids = {"resid": resid, "appid": APPID, "roomid": "live", "recordid": recordid}
        assert (await server.call("pauserecord", ids))["code"] == 0
        await asyncio.sleep(2.0)
        assert (await server.call("resumerecord", ids))["code"] == 0
        await query_until(server.call, "live", recordid,
                          lambda a: "snapshot" in file_kinds(a), timeout=30,
                          what="a snapshot stored")
        await wait_for(lambda: seconds_in(playlist) >= 4, timeout=20, what="4 s recorded")
        stopped = await stop(server.call, "live", resid, recordid)
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()
    kinds = [f["kind"] for f in stopped["files"]]
    assert "mp4" in kinds and "snapshot" in kinds, stopped
    assert "#EXT-X-DISCONTINUITY" in playlist_lines(playlist)  # the pause
    duration = check_mp4(files_dir(server) / f"{base}.mp4", playlist, ["audio", "video"])
    assert duration >= 4, duration
    for f in stopped["files"]:
        if f["kind"] == "snapshot":
            path = server.storage_root() / f["name"]
            with av.open(str(path)) as container:
                picture = next(container.decode(video=0))
            assert (picture.width, picture.height) == (320, 240)
