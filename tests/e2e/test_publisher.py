"""The synthetic WHIP publisher: test pattern, tone, pre-encoded clips."""

from __future__ import annotations

import asyncio
import fractions

import av
import numpy as np
import pytest
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.opus import OpusEncoder

from cloudrec.rooms import PublisherEvent
from cloudrec.webrtc.synthetic import (
    ClipTrack,
    Pacer,
    TestPattern,
    ToneTrack,
    load_clip,
    make_clip,
)
from cloudrec.webrtc.whip_client import PublishError, publish


def nal_units(data: bytes) -> list[bytes]:
    out, i = [], data.find(b"\x00\x00\x01")
    while i >= 0:
        j = data.find(b"\x00\x00\x01", i + 3)
        out.append(data[i + 3 : len(data) if j < 0 else (j - 1 if data[j - 1] == 0 else j)])
        i = j
    return out


async def frames_of(sub, kind: str, count: int, timeout: float = 5.0) -> list:
    out: list = []
    async with asyncio.timeout(timeout):
        while len(out) < count:
            item = await sub.get()
            if isinstance(item, tuple) and item[1].kind == kind:
                out.append(item[1])
    return out


async def next_event(sub, timeout: float = 5.0) -> PublisherEvent:
    async with asyncio.timeout(timeout):
        while not isinstance(item := await sub.get(), PublisherEvent):
            pass
    return item


def _no_wait_pacer() -> Pacer:
    pacer = Pacer()
    pacer.start = -1e9
    return pacer


def test_test_pattern_moves_and_is_yuv420p() -> None:
    pattern = TestPattern(320, 240)
    a, b = pattern.frame(0, 15), pattern.frame(10, 15)
    assert (a.width, a.height, a.format.name) == (320, 240, "yuv420p")
    ya, yb = a.to_ndarray()[:240], b.to_ndarray()[:240]
    assert not np.array_equal(ya[:220], yb[:220])  # the box moved
    band = ya[240 - 20 :]
    assert (band == 235).any() and (band == 16).any()  # clock text over a black band
    with pytest.raises(ValueError):
        TestPattern(321, 240)


async def test_tone_track_uses_an_integer_sample_clock() -> None:
    track = ToneTrack(1000.0, _no_wait_pacer())
    frames = [await track.recv() for _ in range(5)]
    assert [f.pts for f in frames] == [0, 960, 1920, 2880, 3840]
    assert {(f.sample_rate, f.samples, f.time_base) for f in frames} == {
        (48000, 960, fractions.Fraction(1, 48000))}
    samples = np.concatenate([f.to_ndarray()[0] for f in frames]).astype(float)
    spectrum = np.abs(np.fft.rfft(samples))
    assert abs(np.argmax(spectrum) * 48000 / len(samples) - 1000) < 15


def test_make_clip_is_webrtc_friendly(tmp_path) -> None:
    path = make_clip(str(tmp_path / "clip.mkv"), seconds=2, width=320, height=240, fps=15)
    with av.open(path) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert (video.codec_context.name, video.width, video.height) == ("h264", 320, 240)
        assert "Baseline" in video.codec_context.profile
        assert (audio.codec_context.name, audio.sample_rate, audio.channels) == ("opus", 48000, 2)
        packets = [p for p in container.demux(video) if p.size]
        assert len(packets) == 30
        assert [i for i, p in enumerate(packets) if p.is_keyframe] == [0]  # gop = 2 s
        assert all(p.pts == p.dts for p in packets)  # no B-frames
    streams, period_us = load_clip(path)
    assert period_us == 2_000_000
    first = next(s for s in streams if s.kind == "video").packets[0][0]
    assert {7, 8, 5} <= {n[0] & 0x1F for n in nal_units(first)}  # Annex B, SPS/PPS in band


async def test_clip_track_loops_with_continuous_timestamps(tmp_path) -> None:
    path = make_clip(str(tmp_path / "clip.mkv"), seconds=1, width=160, height=120, fps=10)
    streams, period_us = load_clip(path)
    pacer = _no_wait_pacer()
    video = ClipTrack(next(s for s in streams if s.kind == "video"), period_us, pacer)
    pts = [(await video.recv()).pts for _ in range(25)]
    assert pts == [i * 9000 for i in range(25)]
    audio = ClipTrack(next(s for s in streams if s.kind == "audio"), period_us, pacer)
    packets = [await audio.recv() for _ in range(120)]
    assert [p.pts for p in packets] == [i * 960 for i in range(120)]
    assert packets[0].time_base == fractions.Fraction(1, 48000)


async def test_publish_refused_raises(whip_server) -> None:
    with pytest.raises(PublishError) as err:
        await publish(whip_server.url("r", "u"), "not-a-token", duration=1)
    assert err.value.status == 401


async def test_clip_is_sent_without_encoding(whip_server, tmp_path, monkeypatch) -> None:
    s = whip_server
    path = make_clip(str(tmp_path / "clip.mkv"), seconds=1, width=320, height=240, fps=15)
    streams, _ = load_clip(path)
    clip_video = next(x for x in streams if x.kind == "video").packets
    clip_audio = next(x for x in streams if x.kind == "audio").packets
    encoded = []
    for cls in (H264Encoder, OpusEncoder):
        original = cls.encode
        monkeypatch.setattr(cls, "encode", lambda self, *a, _o=original, **k: (
            encoded.append(self), _o(self, *a, **k))[1])
    sub = s.hub.subscribe(s.appid, "clip")
    stop = asyncio.Event()
    task = asyncio.create_task(publish(s.url("clip", "c"), s.token("clip", "c"), clip=path,
                                       stop=stop))
    try:
        assert (await next_event(sub)).info.video_codec == "h264"
        video = await frames_of(sub, "video", 17)  # past the loop point (15 frames)
        audio = await frames_of(sub, "audio", 5)
    finally:
        stop.set()
        stats = await task
    assert encoded == []
    keyframes = [f for f in video if f.keyframe]
    assert keyframes and all(nal_units(f.data) == nal_units(clip_video[0][0]) for f in keyframes)
    sps = [n for n in nal_units(keyframes[0].data) if n[0] & 0x1F == 7]
    assert len(sps) == 1 and sps[0] in nal_units(clip_video[0][0])  # the clip's own SPS
    steps = {b.timestamp - a.timestamp for a, b in zip(video, video[1:])}
    assert steps == {6000}  # 15 fps on a 90 kHz clock, continuous across the loop point
    clip_packets = {d for d, _ in clip_audio}
    assert all(f.data in clip_packets for f in audio)
    assert stats.video_frames >= 17 and stats.video_codec == "h264"
