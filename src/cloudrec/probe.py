"""``cloudrec probe``: what a recording holds, read with PyAV (FFmpeg's own demuxers and
decoders), so the worked example needs nothing that ``make serve`` did not install.

For a playlist or a media file it reports the container's duration and, per stream, the codec,
the picture size or sample rate and channels, and the packets and decoded frames counted by
reading it through (``decode=False`` counts packets only, which is quicker).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class StreamReport:
    index: int
    kind: str
    codec: str
    detail: str
    packets: int = 0
    frames: int = 0


@dataclass
class ProbeReport:
    path: str
    format: str
    duration_s: float | None
    streams: list[StreamReport] = field(default_factory=list)

    def lines(self) -> list[str]:
        duration = "unknown" if self.duration_s is None else f"{self.duration_s:.2f} s"
        out = [f"{self.path}: {self.format}, duration {duration}"]
        for s in self.streams:
            counted = f"{s.packets} packets" + (f", {s.frames} frames decoded" if s.frames else "")
            out.append(f"  stream {s.index}: {s.kind} {s.codec} {s.detail} ({counted})")
        return out


def probe(path: str, *, decode: bool = True) -> ProbeReport:
    """Open ``path`` (a file or URL FFmpeg reads, an ``.m3u8`` included) and read it through."""
    import av

    with av.open(path) as container:
        duration = container.duration / 1_000_000 if container.duration else None
        report = ProbeReport(path, container.format.name, duration)
        streams: dict[int, StreamReport] = {}
        for stream in container.streams:
            ctx: Any = stream.codec_context
            if stream.type == "video":
                detail = f"{ctx.width}x{ctx.height}"
            elif stream.type == "audio":
                detail = f"{ctx.sample_rate} Hz, {ctx.channels} ch"
            else:
                detail = ""
            streams[stream.index] = StreamReport(stream.index, stream.type,
                                                 ctx.name if ctx else "?", detail)
        wanted = [s for s in container.streams if s.type in ("video", "audio")]
        for packet in container.demux(*wanted):
            entry = streams[packet.stream.index]
            if packet.size:
                entry.packets += 1
            if decode:  # an empty packet flushes the frames the decoder still holds
                entry.frames += len(packet.decode())
        report.streams = list(streams.values())
    return report
