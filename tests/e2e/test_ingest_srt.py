"""SRT push ingest: FFmpeg publishes MPEG-TS to a real SrtServer (libsrt) on loopback."""

from __future__ import annotations

import asyncio
import logging

import pytest

from cloudrec.ingest import IngestRefused, libsrt, parse_srt_streamid
from cloudrec.ingest.srt import SrtServer  # loads libsrt only when a server starts
from tests.e2e.ingest_push import GOOD, Recorder, check_frames, push

try:
    libsrt.lib()
except OSError:  # pragma: no cover - libsrt1.5-gnutls comes with Debian's ffmpeg
    pytest.skip("libsrt is not installed", allow_module_level=True)

APPID = 10034


@pytest.fixture
async def srt() -> tuple[SrtServer, Recorder]:
    handler = Recorder()
    server = SrtServer(handler, "127.0.0.1", 0)
    await server.start()
    yield server, handler
    await server.close()


def url(server: SrtServer, uid: str, token: str = GOOD) -> str:
    streamid = f"publish:{APPID}/room1/{uid}" + (f":{token}" if token else "")
    return f"srt://127.0.0.1:{server.port}?streamid={streamid}&pkt_size=1316"


async def test_publish_delivers_h264_and_aac(srt: tuple[SrtServer, Recorder]) -> None:
    server, handler = srt
    rc, err = await push(url(server, "u1"), "mpegts")
    assert rc == 0, err
    await handler.wait_ended("u1")
    assert handler.authorized == [(APPID, "room1", "u1")]
    assert handler.events == [("started", "u1", ""), ("ended", "u1", "closed")]
    # live SRT: what FFmpeg still holds when it closes (its muxing delay) is not sent
    check_frames(handler.frames["u1"], min_video=36, min_audio=100)
    assert not server.connections


@pytest.mark.parametrize("token", ["wrong", ""])
async def test_bad_token_is_refused_before_accept(srt: tuple[SrtServer, Recorder], token: str,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    server, handler = srt
    with caplog.at_level(logging.WARNING, "cloudrec.ingest"):
        started = asyncio.get_running_loop().time()
        rc, err = await push(url(server, "u1", token), "mpegts", "-t", "20")
        elapsed = asyncio.get_running_loop().time() - started
    assert rc != 0, err
    assert elapsed < 15  # not the 20 s of media (sent in real time): refused before any was
    assert handler.events == [] and handler.frames == {} and not server.connections
    assert any(r.levelno == logging.WARNING and f"app={APPID} room=room1 uid=u1" in r.getMessage()
               for r in caplog.records)


async def test_garbage_then_a_publisher(srt: tuple[SrtServer, Recorder]) -> None:
    server, handler = srt
    noise = await asyncio.create_subprocess_exec(
        "ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-re", "-f", "lavfi", "-i",
        "anoisesrc=d=2:sample_rate=44100", "-f", "s16le", url(server, "noise"),
        stderr=asyncio.subprocess.DEVNULL)
    await asyncio.wait_for(noise.wait(), 20)
    await handler.wait_ended("noise", timeout=10)
    assert next(e for e in handler.events if e[1] == "noise")[0] == "started"
    assert not handler.frames.get("noise")
    rc, err = await push(url(server, "after"), "mpegts")
    assert rc == 0, err
    await handler.wait_ended("after")
    check_frames(handler.frames["after"], min_video=36, min_audio=100)


async def test_other_codecs_are_reported_by_name(srt: tuple[SrtServer, Recorder]) -> None:
    server, handler = srt
    rc, err = await push(url(server, "mp2"), "mpegts", "-t", "1", "-c:a", "mp2")
    assert rc == 0, err
    await handler.wait_ended("mp2")
    assert {(f.kind, f.codec) for f in handler.frames["mp2"]} == {("video", "h264"),
                                                                  ("audio", "mp2")}


def test_streamids() -> None:
    sn = parse_srt_streamid("publish:10034/room1/u1:a.b.c")
    assert (sn.appid, sn.roomid, sn.uid, sn.token) == (10034, "room1", "u1", "a.b.c")
    assert parse_srt_streamid("publish:10034/room1/u1").token == ""
    for bad in ["read:10034/r/u:t", "10034/r/u:t", "publish:r/u:t", "publish:x/r/u:t", ""]:
        with pytest.raises(IngestRefused):
            parse_srt_streamid(bad)
