"""RTMP and SRT publishers end to end: Debian's FFmpeg pushes to a real ``cloudrec serve`` (two
workers), a source recording of the uid is made, and the stored playlist is decoded."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from pathlib import Path
from typing import AsyncIterator

import httpx
import pytest

from cloudrec.tokens import make_token
from tests.helpers import (
    APPID,
    LOCAL_STORAGE,
    SECRET,
    free_port,
    make_settings,
    running_server,
    seconds_in,
    source_body,
    startrecord,
    wait_for,
)
from tests.media_check import probe_playlist
from tests.nodes import Node

libsrt = pytest.importorskip("cloudrec.ingest.libsrt")
try:
    libsrt.lib()
except OSError:  # pragma: no cover - libsrt1.5-gnutls comes with Debian's ffmpeg
    pytest.skip("libsrt is not installed", allow_module_level=True)

pytestmark = pytest.mark.slow
SECONDS = 6  # what a recording holds before it is stopped
PUSH = 40  # a push longer than any recording of it needs


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def encode(seconds: float = SECONDS, video: str = "libx264") -> list[str]:
    """A live test source: H.264 constrained baseline (or ``video``) and AAC 48 kHz."""
    args = ["-re", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=15", "-f", "lavfi", "-i",
            "sine=frequency=440:sample_rate=48000", "-t", str(seconds), "-c:v", video,
            "-g", "15", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "64k"]
    if video == "libx264":
        args += ["-profile:v", "baseline", "-tune", "zerolatency"]
    else:
        args += ["-x265-params", "log-level=error"]
    return args


async def ffmpeg(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        "ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", *args,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)


def rtmp_url(port: int, room: str, uid: str, token: str) -> str:
    return f"rtmp://127.0.0.1:{port}/live/{APPID}/{room}/{uid}?token={token}"


def srt_url(port: int, room: str, uid: str, token: str) -> str:
    return (f"srt://127.0.0.1:{port}?streamid=publish:{APPID}/{room}/{uid}:{token}"
            "&pkt_size=1316")


def token(room: str, uid: str) -> str:
    return make_token(APPID, room, uid, SECRET)


def playlist_of(data_dir: Path, room: str, recordid: str, uid: str) -> Path:
    return (data_dir / "storage" / LOCAL_STORAGE["bucket"] / "test1" / "test2"
            / f"{APPID}_{room}_{recordid}_{uid}.m3u8")


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    n = Node(tmp_path, workers=2, rtmp_port=free_port(), srt_port=free_udp_port()).start()
    try:
        await n.ready()
        yield n
    finally:
        n.kill()


async def record_push(node: Node, room: str, uid: str, push: asyncio.subprocess.Process
                      ) -> tuple[Path, float]:
    """Records ``uid`` while ``push`` (a live source longer than needed) runs, until the
    stored playlist holds :data:`SECONDS`, then stops the recording and the push. Returns the
    playlist and the seconds between startrecord and the stop's answer: an upper bound of what
    could be recorded of a real-time push."""
    resid = (await node.call("applyrecord", {}))["resid"]
    began = time.monotonic()
    try:
        started = await startrecord(node.call, source_body(resid, room, uid))
        assert started["code"] == 0, started
        playlist = playlist_of(node.data_dir, room, started["recordid"], uid)
        await wait_for(lambda: seconds_in(playlist) >= SECONDS or push.returncode is not None,
                       timeout=60, what=f"{SECONDS} s stored")
        assert push.returncode is None, "the push ended before the recording held enough"
        stopped = await node.call("stoprecord", {"resid": resid, "appid": APPID, "roomid": room,
                                                 "recordid": started["recordid"]})
        assert stopped["code"] == 0, stopped
        return playlist, time.monotonic() - began
    finally:
        if push.returncode is None:
            push.terminate()
        await push.wait()


async def test_rtmp_and_srt_publishers_are_recorded(node: Node) -> None:
    rtmp_port, srt_port = node.settings["rtmp_port"], node.settings["srt_port"]
    pushes = [await ffmpeg(*encode(PUSH), "-f", "flv", rtmp_url(rtmp_port, "rr", "obs", token(
                  "rr", "obs"))),
              await ffmpeg(*encode(PUSH), "-f", "mpegts", srt_url(srt_port, "rs", "cam", token(
                  "rs", "cam")))]

    recorded = await asyncio.gather(record_push(node, "rr", "obs", pushes[0]),
                                    record_push(node, "rs", "cam", pushes[1]))
    for playlist, elapsed in recorded:
        probe = probe_playlist(playlist)
        assert (probe.video_codec, probe.audio_codec) == ("h264", "aac"), probe
        assert probe.width == 320 and probe.audio_rate == 48000
        # from the first keyframe after startrecord, never more than was sent meanwhile
        assert SECONDS <= probe.duration <= elapsed + 0.5, (probe, elapsed)
        # (the duration is the container's: the audio may run up to a few frames past the
        # last picture at either end, as segments are cut on video and stopped on audio)
        assert probe.video_frames >= (probe.duration - 0.5) * 15, probe
        assert probe.audio_frames >= probe.duration * 46.8 - 3, probe
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{node.base}/metrics")).text
    started = {kind: sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                         if line.startswith("cloudrec_ingests_started_total{")
                         and f'kind="{kind}"' in line) for kind in ("rtmp", "srt")}
    assert started == {"rtmp": 1.0, "srt": 1.0}, text


async def test_bad_tokens_are_refused_and_nothing_enters_the_room(node: Node) -> None:
    bad = token("rr", "someone-else")
    rtmp = await ffmpeg(*encode(2), "-f", "flv", rtmp_url(node.settings["rtmp_port"], "rr",
                                                            "obs", bad))
    srt = await ffmpeg(*encode(2), "-f", "mpegts", srt_url(node.settings["srt_port"], "rs",
                                                            "cam", "nonsense"))
    for proc in (rtmp, srt):
        _, err = await asyncio.wait_for(proc.communicate(), 10)
        assert proc.returncode != 0, err
    health = await node.health()
    assert all(not w["rooms"] for w in health["workers"]), health
    resid = (await node.call("applyrecord", {}))["resid"]
    assert (await node.call("startrecord", source_body(resid, "rr", "obs")))["code"] == 4005


async def test_h265_over_srt_is_recorded_as_h264(node: Node) -> None:
    push = await ffmpeg(*encode(PUSH, video="libx265"), "-f", "mpegts",
                        srt_url(node.settings["srt_port"], "hevc", "cam", token("hevc", "cam")))
    playlist, elapsed = await record_push(node, "hevc", "cam", push)
    probe = probe_playlist(playlist)
    assert (probe.video_codec, probe.audio_codec) == ("h264", "aac"), probe
    assert SECONDS <= probe.duration <= elapsed + 0.5, (probe, elapsed)
    # the transcoded video begins up to a second after the audio
    assert probe.video_frames >= (probe.duration - 1) * 15, probe


async def test_in_process_rtmp_with_srt_off(tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    """``workers = 1``: the link is a direct call; ``srt_port = 0`` turns SRT off, and a
    refused publisher leaves a WARNING naming app/room/uid."""
    settings = make_settings(tmp_path, rtmp_port=free_port(), srt_port=0, segment_seconds=1.0)
    async with running_server(settings) as server:
        front = server.app.state.front
        assert [type(s).__name__ for s in front.push.servers] == ["RtmpServer"]
        with caplog.at_level(logging.WARNING):
            refused = await ffmpeg(*encode(2), "-f", "flv",
                                   rtmp_url(settings.rtmp_port, "r1", "u1", "bad"))
            _, err = await asyncio.wait_for(refused.communicate(), 10)
        assert refused.returncode != 0 and b"refused" in err
        assert any(r.levelno == logging.WARNING and f"app={APPID} room=r1 uid=u1"
                   in r.getMessage() for r in caplog.records)
        assert not server.app.state.hub.publications()
        push = await ffmpeg(*encode(4), "-f", "flv",
                            rtmp_url(settings.rtmp_port, "r1", "u1", token("r1", "u1")))
        pubs = await wait_for(server.app.state.hub.publications, timeout=10)
        assert pubs[0]["origin"] == "rtmp" and pubs[0]["video_codec"] == "h264"
        assert pubs[0]["audio_codec"] == "aac"
        _, err = await asyncio.wait_for(push.communicate(), 30)
        assert push.returncode == 0, err
        await wait_for(lambda: not server.app.state.hub.publications(), timeout=5)


async def test_rtmp_port_zero_turns_rtmp_off(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, rtmp_port=0, srt_port=free_udp_port())
    async with running_server(settings) as server:
        assert [type(s).__name__ for s in server.app.state.front.push.servers] == ["SrtServer"]
