"""RTCP sender reports put a WebRTC publisher's audio and video on one clock.

An aiortc publisher sends the flash-and-beep clip (tests/syncclip.py) as it is, paced in real
time; every audio RTP packet leaves its DTLS transport 300 ms after aiortc handed it over, as
if the audio were captured, encoded or queued later than the video. RTP timestamps are
untouched, and so are aiortc's sender reports: aiortc takes a report's NTP time when the
packet is handed over (here: when the clip's pacer released it, its capture time), so the
reports say where each packet belongs. Arrival alone puts the audio ~300 ms late.
"""

from __future__ import annotations

import asyncio
import statistics
from pathlib import Path
from typing import Any

import pytest
from aiortc.rtcdtlstransport import RTCDtlsTransport

from cloudrec.tokens import make_token
from cloudrec.webrtc.whip_client import Publisher
from tests.e2e.test_interop import (  # noqa: F401 (ffmpeg_whip: a fixture)
    FFMPEG,
    _wait_for,
    ffmpeg_whip,
    needs_ffmpeg,
)
from tests.e2e.test_sync import record_source_and_mix
from tests.helpers import APPID, SECRET, make_settings, running_server
from tests.media_check import lip_sync_offsets
from tests.syncclip import make_flash_clip, summary

DELAY_S = 0.300


def delay_audio(monkeypatch: pytest.MonkeyPatch, pubs: list[Publisher]) -> None:
    """Every RTP packet of the audio of the publishers in ``pubs`` (a list the caller may add
    to later) leaves ``DELAY_S`` after aiortc sends it."""
    send = RTCDtlsTransport._send_rtp
    loop = asyncio.get_running_loop()

    async def late(transport: RTCDtlsTransport, data: bytes) -> None:
        try:
            await send(transport, data)
        except Exception:
            pass  # the connection closed meanwhile

    async def send_rtp(transport: RTCDtlsTransport, data: bytes) -> None:
        audio = {t.sender._ssrc for pub in pubs for t in pub.pc.getTransceivers()
                 if t.kind == "audio"}
        if not 192 <= data[1] <= 223 and int.from_bytes(data[8:12], "big") in audio:
            loop.call_later(DELAY_S, lambda: loop.create_task(late(transport, data)))
            return
        await send(transport, data)

    monkeypatch.setattr(RTCDtlsTransport, "_send_rtp", send_rtp)


async def arrival_after_capture(hub: Any, room: str, seconds: float = 2.0) -> dict[str, float]:
    """Per kind, the median of ``arrival - wallclock`` over ``seconds`` of the room's frames
    (the two clocks differ by a constant: only the difference between kinds means anything)."""
    sub = hub.subscribe(APPID, room)
    seen: dict[str, list[float]] = {"audio": [], "video": []}
    deadline = asyncio.get_running_loop().time() + seconds
    try:
        while (left := deadline - asyncio.get_running_loop().time()) > 0:
            try:
                item = await asyncio.wait_for(sub.get(), left)
            except TimeoutError:
                break
            if isinstance(item, tuple) and item[1].wallclock is not None:
                seen[item[1].kind].append(item[1].arrival - item[1].wallclock)
    finally:
        sub.close()
    return {kind: statistics.median(values) for kind, values in seen.items()}


def ignore_sender_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    """The receiver as it was before sender reports were read: arrival alone."""
    from cloudrec.rtp.receiver import LeanReceiver

    def clock(self: Any, slot: Any) -> None:
        return None

    monkeypatch.setattr(LeanReceiver, "_clock", clock)


@pytest.mark.slow
@needs_ffmpeg
@pytest.mark.parametrize("mapping", ["sender reports", "arrival"])
async def test_audio_sent_late_lines_up_through_sender_reports(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mapping: str) -> None:
    clip = make_flash_clip(FFMPEG, tmp_path / "flash.mkv", 30)  # type: ignore[arg-type]
    if mapping == "arrival":
        ignore_sender_reports(monkeypatch)
    settings = make_settings(tmp_path, write_rate_per_s=100, query_rate_per_s=100,
                             segment_seconds=4.0)
    room, uid = "late-audio", "flash"
    async with running_server(settings) as server:
        webrtc = server.app.state.webrtc
        pub = Publisher(server.whip_url(room, uid), make_token(APPID, room, uid, SECRET),
                        clip=str(clip))
        delay_audio(monkeypatch, [pub])
        await pub.start()
        try:
            await pub.wait_connected()

            def clocked() -> bool:
                sessions = [s for s in webrtc.sessions() if s.uid == uid]
                return bool(sessions) and sessions[0].frames > 0 and (
                    mapping == "arrival" or all(sessions[0].clocks.get(k) is not None
                                                for k in ("audio", "video")))

            await _wait_for(clocked, 20, "no media, or no sender report for both tracks")
            if mapping == "sender reports":  # the reports agree with the RTP clocks: capture
                late = await arrival_after_capture(webrtc.hub, room)  # times 300 ms apart
                assert abs(late["audio"] - late["video"] - DELAY_S) < 0.05, late
            source_list, mix_list = await record_source_and_mix(server, room, uid, 14)
        finally:
            await pub.stop()
    source, mixed = lip_sync_offsets(source_list), lip_sync_offsets(mix_list)
    print(f"{mapping}: source {summary(source)}; mix {summary(mixed)}")
    assert len(source) >= 8 and len(mixed) >= 8, (source, mixed)
    if mapping == "arrival":  # the delay is real: without the reports the audio is late
        # (by less than DELAY_S where the first picture itself came late and set video's place)
        assert min(source) >= DELAY_S / 2 and min(mixed) >= DELAY_S / 2, (source, mixed)
    else:
        assert max(abs(o) for o in source) <= 0.045, summary(source)
        assert max(abs(o) for o in mixed) <= 0.070, summary(mixed)
