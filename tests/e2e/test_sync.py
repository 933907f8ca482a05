"""Lip sync and the room timeline, measured in what is stored: FFmpeg's WHIP muxer publishes a
picture that flashes white at every whole second with a 1 kHz beep that starts at the same
instant; the offset between the flash and the beep is read back with PyAV."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cloudrec.tokens import make_token
from tests.e2e.test_interop import (  # noqa: F401 (ffmpeg_whip: a fixture)
    FFMPEG,
    _end,
    _has_media,
    _wait_for,
    ffmpeg_whip,
    needs_ffmpeg,
)
from tests.e2e.test_mixed import playlist_of as mixed_playlist_of
from tests.e2e.test_mixed import start_mixed
from tests.e2e.test_mixed import stop as stop_mixed
from tests.e2e.test_recording import playlist_of, start, stop
from tests.helpers import APPID, SECRET, Server, make_settings, running_server
from tests.media_check import flash_wall_times, lip_sync_offsets, playlist_dates
from tests.syncclip import ffmpeg_whip_many, make_flash_clip, one_input_mix, summary

SOURCE_GOAL_S = 0.045
MIX_GOAL_S = 0.070


async def record_source_and_mix(server: Server, room: str, uid: str,
                                seconds: float) -> tuple[Path, Path]:
    """A source recording of ``uid`` and a one-input mix of it, ``seconds`` long: their
    playlists."""
    resid, recordid, _ = await start(server, room, uid, 0)
    mres, mrec = await start_mixed(server, room, one_input_mix(room, uid))
    await asyncio.sleep(seconds)
    await stop(server, room, resid, recordid)
    await stop_mixed(server, room, mres, mrec)
    return playlist_of(server, room, recordid, uid), mixed_playlist_of(server, room, mrec)


@pytest.mark.slow
@needs_ffmpeg
async def test_flash_and_beep_line_up_in_a_source_recording_and_a_mix(tmp_path: Path) -> None:
    clip = make_flash_clip(FFMPEG, tmp_path / "flash.mkv", 24)
    log = tmp_path / "ffmpeg.log"
    settings = make_settings(tmp_path, write_rate_per_s=100, query_rate_per_s=100,
                             segment_seconds=4.0)
    room, uid = "sync", "flash"
    async with running_server(settings) as server:
        webrtc = server.app.state.webrtc
        proc = await ffmpeg_whip_many(
            FFMPEG, clip, [(server.whip_url(room, uid), make_token(APPID, room, uid, SECRET))], log)
        try:
            await _wait_for(lambda: _has_media(webrtc, room, uid), 20,
                            "no media from FFmpeg", proc, log)
            source_list, mix_list = await record_source_and_mix(server, room, uid, 16)
        finally:
            await _end(proc)
    source, mixed = lip_sync_offsets(source_list), lip_sync_offsets(mix_list)
    print("source:", summary(source), "\nmix:", summary(mixed))
    assert len(source) >= 10 and len(mixed) >= 10, (source, mixed)
    assert max(abs(o) for o in source) <= SOURCE_GOAL_S, summary(source)
    assert max(abs(o) for o in mixed) <= MIX_GOAL_S, summary(mixed)


@pytest.mark.slow
@needs_ffmpeg
async def test_two_recordings_of_one_room_line_up_on_program_date_time(tmp_path: Path) -> None:
    """One FFmpeg process publishes the same clip as two users of a room; their source
    recordings, started 4 s apart, agree on the wall-clock time of every flash."""
    clip = make_flash_clip(FFMPEG, tmp_path / "flash.mkv", 24)
    log = tmp_path / "ffmpeg.log"
    settings = make_settings(tmp_path, write_rate_per_s=100, query_rate_per_s=100,
                             segment_seconds=4.0)
    room, uids = "timeline", ("left", "right")
    async with running_server(settings) as server:
        webrtc = server.app.state.webrtc
        proc = await ffmpeg_whip_many(FFMPEG, clip, [
            (server.whip_url(room, uid), make_token(APPID, room, uid, SECRET)) for uid in uids
        ], log)
        try:
            for uid in uids:
                await _wait_for(lambda u=uid: _has_media(webrtc, room, u), 20,  # type: ignore[misc]
                                "no media from FFmpeg", proc, log)
            first = await start(server, room, uids[0], 0)
            await asyncio.sleep(4)
            second = await start(server, room, uids[1], 0)
            await asyncio.sleep(10)
            for (resid, recordid, _) in (first, second):
                await stop(server, room, resid, recordid)
            answer = await server.call(f"queryrecord/{room}/{second[1]}")
        finally:
            await _end(proc)
    a = flash_wall_times(playlist_of(server, room, first[1], uids[0]))
    b = flash_wall_times(playlist_of(server, room, second[1], uids[1]))
    dates_a = playlist_dates(playlist_of(server, room, first[1], uids[0]))
    dates_b = playlist_dates(playlist_of(server, room, second[1], uids[1]))
    assert all(d is not None for d in dates_a + dates_b)
    assert 2.5 <= dates_b[0] - dates_a[0] <= 6.0, (dates_a, dates_b)  # type: ignore[operator]
    pairs = [min((y - x for y in b), key=abs) for x in a if b[0] - 0.5 <= x <= b[-1] + 0.5]
    print("program date time, right - left:", summary(pairs))
    assert len(pairs) >= 6 and max(abs(d) for d in pairs) <= 0.100, pairs
    data = answer.get("data", answer)
    assert abs(data["firstframetime"] - dates_b[0] * 1000) <= 1, data  # type: ignore[operator]
