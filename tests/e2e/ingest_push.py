"""What the ingest end-to-end tests share: a recording handler, FFmpeg pushes, frame checks."""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass, field
from itertools import pairwise

import av

from cloudrec.ingest import IngestConnection
from cloudrec.ingest.demux import demux_frames
from cloudrec.ingest.flv import FlvReader
from cloudrec.media.codecs.h264 import split_annexb
from cloudrec.mediatypes import EncodedFrame

GOOD = "good-token"
DURATION = 3.0
FPS = 15
# a small live source: H.264 constrained baseline without lookahead, AAC 48 kHz
ENCODE = ["-re", "-f", "lavfi", "-i", f"testsrc=size=320x240:rate={FPS}", "-f", "lavfi",
          "-i", "sine=frequency=440:sample_rate=48000", "-t", str(DURATION),
          "-c:v", "libx264", "-profile:v", "baseline", "-tune", "zerolatency", "-g", str(FPS),
          "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "64k"]


@dataclass
class Recorder:
    """An IngestHandler that accepts one token and keeps everything it is told."""

    events: list[tuple[str, str, str]] = field(default_factory=list)
    frames: dict[str, list[EncodedFrame]] = field(default_factory=dict)
    authorized: list[tuple[int, str, str]] = field(default_factory=list)
    readers: dict[str, FlvReader] = field(default_factory=dict)
    streams: dict[str, bytearray] = field(default_factory=dict)

    async def authorize(self, appid: int, roomid: str, uid: str, token: str) -> None:
        if token != GOOD:
            raise PermissionError("token does not match")
        self.authorized.append((appid, roomid, uid))

    def started(self, conn: IngestConnection) -> None:
        self.events.append(("started", conn.uid, ""))
        self.frames.setdefault(conn.uid, [])

    def data(self, conn: IngestConnection, chunk: bytes) -> None:
        """FLV is parsed as it comes (as the worker does); MPEG-TS is kept and demuxed at
        the end, with the worker's PyAV demuxer."""
        if conn.fmt == "flv":
            reader = self.readers.setdefault(conn.uid, FlvReader(conn.epoch))
            for frame in reader.feed(chunk):
                self.frame(conn, frame)
        else:
            self.streams.setdefault(conn.uid, bytearray()).extend(chunk)

    def frame(self, conn: IngestConnection, frame: EncodedFrame) -> None:
        self.frames.setdefault(conn.uid, []).append(frame)

    def ended(self, conn: IngestConnection, reason: str) -> None:
        stream = self.streams.pop(conn.uid, None)
        if stream:
            def deliver(frame: EncodedFrame) -> bool:
                self.frame(conn, frame)
                return True
            try:
                demux_frames(io.BytesIO(bytes(stream)), conn.epoch, deliver)
            except (av.FFmpegError, ValueError):
                pass  # garbage: no frames
        self.events.append(("ended", conn.uid, reason))

    async def wait_ended(self, uid: str, timeout: float = 5.0) -> None:
        for _ in range(int(timeout * 20)):
            if any(e[0] == "ended" and e[1] == uid for e in self.events):
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{uid} never ended: {self.events}")


async def push(url: str, fmt: str, *extra: str, timeout: float = 30.0) -> tuple[int, str]:
    """Runs FFmpeg's push of :data:`ENCODE` to ``url``; its exit status and stderr."""
    proc = await asyncio.create_subprocess_exec(
        "ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", *ENCODE, *extra, "-f", fmt,
        url, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, err.decode(errors="replace")


def check_frames(frames: list[EncodedFrame], min_video: int, min_audio: int) -> None:
    """H.264 keyframes carry SPS/PPS and decode, timestamps rise, AAC (ADTS) decodes."""
    video = [f for f in frames if f.kind == "video"]
    audio = [f for f in frames if f.kind == "audio"]
    expected_video, expected_audio = DURATION * FPS, DURATION * 48000 / 1024
    assert min_video <= len(video) <= expected_video + 2, len(video)
    assert min_audio <= len(audio) <= expected_audio + 3, len(audio)
    assert {(f.codec, f.clock_rate) for f in video} == {("h264", 90000)}
    assert {(f.codec, f.clock_rate) for f in audio} == {("aac", 48000)}
    assert len({f.epoch for f in frames}) == 1
    assert video[0].keyframe
    keyframes = [f for f in video if f.keyframe]
    assert len(keyframes) >= len(video) // FPS
    for f in keyframes:
        types = [nal[0] & 0x1F for nal in split_annexb(f.data)]
        assert 7 in types and 8 in types and 5 in types, types
        assert types.index(7) < types.index(5) and types.index(8) < types.index(5)
    for kind in (video, audio):
        stamps = [f.timestamp for f in kind]
        assert stamps[0] < 90000 * 0.5 and all(b > a for a, b in pairwise(stamps))
    steps = {b.timestamp - a.timestamp for a, b in pairwise(video)}
    assert all(5900 <= s <= 6100 for s in steps), steps  # 15 fps in 90 kHz, FLV's ms rounding
    decoder = av.CodecContext.create("h264", "r")
    pictures = [p for f in video for p in decoder.decode(av.Packet(f.data))]
    assert len(pictures) >= len(video) - 2 and pictures[0].width == 320
    decoder = av.CodecContext.create("aac", "r")
    samples = [s for f in audio for s in decoder.decode(av.Packet(f.data))]
    assert len(samples) >= len(audio) - 2 and samples[0].sample_rate == 48000
    assert all(f.data[:2] == b"\xff\xf1" for f in audio)
