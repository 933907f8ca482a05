"""Lip sync through ingest: Debian's FFmpeg pushes the flash + beep clip (tests/syncclip.py; its
Opus becomes AAC, whose encoder delay FFmpeg's muxers declare) over RTMP and over SRT; each
publisher is recorded as a source and as a one-input mix, and the offset between every flash and
its beep is read back with PyAV. Ingested publishers have no sender reports: their container's
timestamps, one timeline for both tracks, place them (before, each track was placed by its
arrival, and SRT's audio, which FFmpeg's MPEG-TS muxer sends ~0.3 s after its video, was
recorded 0.27-0.29 s late; and a mix took no AAC, so it had no sound from any ingested
publisher; and the AAC that an MPEG-TS muxer packs in PES packets of ~0.25 s came to the mix
after its place and was dropped: beeps were lost; and the mix learnt an input's video delay from
its first key frame alone, which, large, comes late: its first flash was 70-125 ms off)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cloudrec.tokens import make_token
from tests.e2e.test_ingest_push import free_udp_port
from tests.e2e.test_sync import MIX_GOAL_S, SOURCE_GOAL_S, record_source_and_mix
from tests.helpers import APPID, SECRET, Server, free_port, make_settings, running_server, wait_for
from tests.media_check import lip_sync_offsets
from tests.syncclip import make_flash_clip, summary

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs Debian's ffmpeg")]


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    settings = make_settings(tmp_path / "data", rtmp_port=free_port(), srt_port=free_udp_port(),
                             write_rate_per_s=100, query_rate_per_s=100, segment_seconds=4.0)
    async with running_server(settings) as s:
        yield s


def push_url(server: Server, transport: str, room: str, uid: str) -> tuple[str, str]:
    token = make_token(APPID, room, uid, SECRET)
    if transport == "rtmp":
        return (f"rtmp://127.0.0.1:{server.settings.rtmp_port}/live/{APPID}/{room}/{uid}"
                f"?token={token}"), "flv"
    return (f"srt://127.0.0.1:{server.settings.srt_port}?streamid=publish:{APPID}/{room}/{uid}:"
            f"{token}&pkt_size=1316"), "mpegts"


@pytest.mark.parametrize("transport", ["rtmp", "srt"])
async def test_flash_and_beep_line_up_through_ingest(server: Server, tmp_path: Path,
                                                     transport: str) -> None:
    clip = make_flash_clip("ffmpeg", tmp_path / "flash.mkv", 24)
    room, uid = f"sync{transport}", "flash"
    url, fmt = push_url(server, transport, room, uid)
    log = (tmp_path / "ffmpeg.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        "ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-re", "-i", str(clip),
        "-c:v", "copy", "-c:a", "aac", "-b:a", "96k", "-f", fmt, url,
        stdout=asyncio.subprocess.DEVNULL, stderr=log)
    hub = server.app.state.hub
    try:
        await wait_for(lambda: any(p.uid == uid for p in hub.publishers(APPID, room)),
                       timeout=20, what="the pushed publisher in the room")
        source_list, mix_list = await record_source_and_mix(server, room, uid, 16)
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()
        log.close()
    source, mixed = lip_sync_offsets(source_list), lip_sync_offsets(mix_list)
    print(f"{transport} source:", summary(source), f"\n{transport} mix:", summary(mixed))
    assert len(source) >= 10, source
    assert max(abs(o) for o in source) <= SOURCE_GOAL_S, summary(source)
    assert len(mixed) >= 10, mixed
    assert max(abs(o) for o in mixed) <= MIX_GOAL_S, summary(mixed)
