"""Synthetic media for test publishers: a moving test pattern with a visible clock, a sine
tone, and pre-encoded clips sent as they are.

The tracks are aiortc ``MediaStreamTrack`` objects (:mod:`cloudrec.webrtc.whip_client` sends
them). Timestamps come from integer clocks (frame and sample counts), never from float seconds;
the tracks of one publisher share a :class:`Pacer`, so audio and video stay in step. A clip
(H.264 or VP8 video, Opus audio; see :func:`make_clip`) is sent packet by packet, looped with
continuous timestamps: no encoder runs, so a benchmark publisher costs almost nothing.
"""

from __future__ import annotations

import asyncio
import datetime
import fractions
from dataclasses import dataclass

import av
import numpy as np
from aiortc import MediaStreamTrack
from PIL import Image, ImageDraw, ImageFont

__all__ = ["AUDIO_RATE", "VIDEO_CLOCK", "ClipTrack", "Pacer", "TestPattern",
           "TestPatternTrack", "ToneTrack", "load_clip", "make_clip"]

VIDEO_CLOCK = 90000
AUDIO_RATE = 48000
AUDIO_SAMPLES = 960  # 20 ms at 48 kHz


class Pacer:
    """One start time shared by the tracks of a publisher, so audio and video stay in step."""

    def __init__(self) -> None:
        self.start: float | None = None

    async def wait(self, pts: int, clock: int) -> None:
        loop = asyncio.get_running_loop()
        if self.start is None:
            self.start = loop.time()
        delay = self.start + pts / clock - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)


# -- synthetic media -------------------------------------------------------------------------

_BARS = [(235, 128, 128), (210, 16, 146), (170, 166, 16), (145, 54, 34),
         (106, 202, 222), (81, 90, 240), (41, 240, 110)]  # white yellow cyan green magenta red blue


class TestPattern:
    """Colour bars, a moving box and a clock/frame-counter line, drawn straight in yuv420p."""

    __test__ = False  # not a pytest class

    def __init__(self, width: int, height: int) -> None:
        if width % 2 or height % 2:
            raise ValueError("width and height must be even")
        self.width, self.height = width, height
        self._base = np.empty(width * height * 3 // 2, np.uint8)
        y, u, v = self._planes(self._base)
        for i, (by, bu, bv) in enumerate(_BARS):
            x0, x1 = i * width // 7, (i + 1) * width // 7
            y[:, x0:x1] = by
            u[:, x0 // 2 : x1 // 2] = bu
            v[:, x0 // 2 : x1 // 2] = bv
        self._text_h = max(12, height // 12) & ~1
        self._font = ImageFont.load_default(size=self._text_h - 2)
        self._box = max(2, height // 6) & ~1

    def _planes(self, buf: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        w, h = self.width, self.height
        q = w * h // 4
        return (buf[: w * h].reshape(h, w), buf[w * h : w * h + q].reshape(h // 2, w // 2),
                buf[w * h + q :].reshape(h // 2, w // 2))

    def frame(self, index: int, fps: int) -> av.VideoFrame:
        buf = self._base.copy()
        y, u, v = self._planes(buf)
        w, h, b = self.width, self.height, self._box
        span = max(1, w - b)
        x = (index * 4) % (2 * span)
        x = (x if x < span else 2 * span - x) & ~1
        top = (h // 2 - b // 2) & ~1
        y[top : top + b, x : x + b] = 16
        u[top // 2 : (top + b) // 2, x // 2 : (x + b) // 2] = 128
        v[top // 2 : (top + b) // 2, x // 2 : (x + b) // 2] = 128
        label = f"{datetime.datetime.now():%H:%M:%S.%f}"[:-3] + f"  #{index}  {fps}fps"
        text = Image.new("L", (w, self._text_h), 0)
        ImageDraw.Draw(text).text((4, 0), label, fill=255, font=self._font)
        mask = np.asarray(text)
        y[h - self._text_h :] = np.where(mask > 127, 235, 16)
        u[(h - self._text_h) // 2 :] = 128
        v[(h - self._text_h) // 2 :] = 128
        return av.VideoFrame.from_ndarray(buf.reshape(h * 3 // 2, w), format="yuv420p")


class TestPatternTrack(MediaStreamTrack):
    __test__ = False  # not a pytest class
    kind = "video"

    def __init__(self, width: int, height: int, fps: int, pacer: Pacer) -> None:
        super().__init__()
        self._pattern = TestPattern(width, height)
        self._fps = fps
        self._pacer = pacer
        self._time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self.frames = 0

    async def recv(self) -> av.VideoFrame:
        pts = self.frames * VIDEO_CLOCK // self._fps
        await self._pacer.wait(pts, VIDEO_CLOCK)
        frame = self._pattern.frame(self.frames, self._fps)
        frame.pts, frame.time_base = pts, self._time_base
        self.frames += 1
        return frame


class ToneTrack(MediaStreamTrack):
    kind = "audio"

    def __init__(self, tone_hz: float, pacer: Pacer) -> None:
        super().__init__()
        self._step = 2 * np.pi * tone_hz / AUDIO_RATE
        self._pacer = pacer
        self._time_base = fractions.Fraction(1, AUDIO_RATE)
        self.frames = 0

    async def recv(self) -> av.AudioFrame:
        pts = self.frames * AUDIO_SAMPLES
        await self._pacer.wait(pts, AUDIO_RATE)
        n = np.arange(pts, pts + AUDIO_SAMPLES, dtype=np.float64)
        samples = (np.sin(n * self._step) * 8000).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = AUDIO_RATE, pts, self._time_base
        self.frames += 1
        return frame


# -- pre-encoded clips -----------------------------------------------------------------------


def make_clip(path: str, seconds: float = 4, width: int = 640, height: int = 480, fps: int = 15,
              gop: int | None = None, bitrate: int = 1_000_000, tone_hz: float = 440.0,
              grain: int = 12, voice: bool = False, audio_channels: int = 2) -> str:
    """Write an H.264 (baseline, level 3.1, no B-frames) + Opus 48 kHz stereo clip with PyAV.

    ``grain`` adds that much random noise to the luma, so the encoder actually spends about
    ``bitrate`` (a bare test pattern compresses to a fraction of it); 0 for a clean picture.
    ``voice`` replaces the steady tone with a voice-like signal (a gliding pitch around
    ``tone_hz``, syllable-rate loudness and a little breath noise): audio encoders spend very
    different effort on a pure tone and on speech, so benchmarks use this one.
    ``audio_channels`` 1 sends mono Opus, as browsers do from a microphone by default.
    """
    gop = gop or fps * 2
    rng = np.random.default_rng(1)
    frames = round(seconds * fps)
    with av.open(path, "w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.bit_rate = bitrate
        video.options = {"profile": "baseline", "level": "3.1", "preset": "veryfast", "bf": "0",
                         "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"}
        layout = "stereo" if audio_channels == 2 else "mono"
        audio = container.add_stream("libopus", rate=AUDIO_RATE, layout=layout)
        audio.bit_rate = 64000
        pattern = TestPattern(width, height)
        for i in range(frames):
            frame = pattern.frame(i, fps)
            if grain:
                planes = frame.to_ndarray()
                noise = rng.integers(-grain, grain + 1, (height, width), dtype=np.int16)
                planes[:height] = np.clip(planes[:height] + noise, 16, 235).astype(np.uint8)
                frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
            frame.pts = i
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        step = 2 * np.pi * tone_hz / AUDIO_RATE
        for start in range(0, frames * AUDIO_RATE // fps, AUDIO_SAMPLES):
            n = np.arange(start, start + AUDIO_SAMPLES, dtype=np.float64)
            if voice:
                t = n / AUDIO_RATE
                pitch = step * (1 + 0.3 * np.sin(2 * np.pi * 0.5 * t))
                level = 0.55 + 0.45 * np.sin(2 * np.pi * 3 * t)
                wave = np.sin(n * pitch) * level + 0.04 * rng.standard_normal(n.size)
                mono = (wave * 8000).astype(np.int16)
            else:
                mono = (np.sin(n * step) * 8000).astype(np.int16)
            samples = np.repeat(mono, audio_channels).reshape(1, -1)  # packed
            sound = av.AudioFrame.from_ndarray(samples, format="s16", layout=layout)
            sound.sample_rate, sound.pts = AUDIO_RATE, start
            container.mux(audio.encode(sound))
        container.mux(audio.encode(None))
    return path


@dataclass
class ClipStream:
    kind: str
    codec: str  # "h264", "vp8", "opus"
    clock: int
    packets: list[tuple[bytes, int]]  # (data, pts in `clock` units from 0)


def load_clip(path: str) -> tuple[list[ClipStream], int]:
    """Read a clip into memory as (Annex B) packets on integer clocks; returns (streams, period)
    where ``period`` is the loop length in microseconds (video's length when there is video).

    Video times are snapped to the stream's frame rate (Matroska stores milliseconds)."""
    out: list[ClipStream] = []
    period = fractions.Fraction(0)
    with av.open(path) as container:
        for stream in container.streams:
            if stream.type not in ("video", "audio"):
                continue
            codec = stream.codec_context.name
            codec = {"libopus": "opus", "libvpx": "vp8"}.get(codec, codec)
            if codec not in ("h264", "vp8", "opus"):
                raise ValueError(f"clip {path}: {codec} cannot be sent without re-encoding")
            bsf = (av.bitstream.BitStreamFilterContext("h264_mp4toannexb", stream)
                   if codec == "h264" else None)
            clock = VIDEO_CLOCK if stream.type == "video" else AUDIO_RATE
            rate = stream.average_rate or stream.guessed_rate if stream.type == "video" else None
            step = 1 / fractions.Fraction(rate) if rate else fractions.Fraction(AUDIO_SAMPLES,
                                                                                AUDIO_RATE)
            raw: list[tuple[bytes, fractions.Fraction]] = []
            time_base = stream.time_base
            assert time_base is not None  # every demuxed stream has one
            container.seek(0)
            for packet in container.demux(stream):
                if packet.size == 0 or packet.pts is None:
                    continue
                for p in bsf.filter(packet) if bsf is not None else [packet]:
                    assert p.pts is not None  # the filter keeps the packet's timestamps
                    t = p.pts * time_base
                    raw.append((bytes(p), round(t / step) * step if rate else t))
            if not raw:
                continue
            first = raw[0][1]
            out.append(ClipStream(stream.type, codec, clock,
                                   [(d, round((t - first) * clock)) for d, t in raw]))
            if stream.type == "video" or not period:
                period = max(t for _, t in raw) - first + step
    if not out:
        raise ValueError(f"clip {path} has no audio or video")
    return out, round(period * 1_000_000)


class ClipTrack(MediaStreamTrack):
    """Sends a clip stream's packets unchanged: aiortc packetizes ``av.Packet`` as it is."""

    def __init__(self, stream: ClipStream, period_us: int, pacer: Pacer) -> None:
        super().__init__()
        self.kind = stream.kind
        self._clock = stream.clock
        self._period = period_us * stream.clock // 1_000_000
        self._packets = [(d, t) for d, t in stream.packets if t < self._period]
        self._time_base = fractions.Fraction(1, stream.clock)
        self._pacer = pacer
        self.frames = 0

    async def recv(self) -> av.Packet:
        loops, index = divmod(self.frames, len(self._packets))
        data, t = self._packets[index]
        pts = loops * self._period + t
        await self._pacer.wait(pts, self._clock)
        packet = av.Packet(data)
        packet.pts, packet.time_base = pts, self._time_base
        self.frames += 1
        return packet
