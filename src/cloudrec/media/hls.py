"""HLS output: the EVENT playlist and the MPEG-TS segment files beside it.

Durability rules (a crash must never leave a listed segment truncated):

- a segment is written to ``{name}.part``, closed, fsynced, then renamed to ``{name}``;
- the playlist is written to a temporary file, fsynced and renamed over the old one;
- a segment is listed only after its file is complete.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from cloudrec.errors import RecordingError

TS_CLOCK = 90_000  # MPEG-TS timestamps are in 90 kHz ticks
PTS_ORIGIN = TS_CLOCK  # recordings start at 1 s: the AAC priming frame never goes negative
TS_TIME_BASE = Fraction(1, TS_CLOCK)


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    """One closed segment, as listed in the playlist."""

    index: int  # media sequence number
    name: str  # file name, e.g. "10034_room_rec_u1_00003.ts"
    path: Path
    duration: float  # seconds, from integer PTS
    discontinuity: bool  # listed after #EXT-X-DISCONTINUITY
    size: int  # bytes


def segment_name(basename: str, seq: int) -> str:
    return f"{basename}_{seq:05d}.ts"


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that readers see the old or the new file, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


class HlsPlaylist:
    """An EVENT playlist (``#EXT-X-PLAYLIST-TYPE:EVENT``, media sequence 0, never trimmed)."""

    def __init__(self, path: Path, segment_seconds: float) -> None:
        self.path = path
        self.segment_seconds = segment_seconds

    def target_duration(self, segments: list[SegmentInfo]) -> int:
        longest = max((s.duration for s in segments), default=0.0)
        return max(math.ceil(self.segment_seconds), math.ceil(round(longest, 3)))

    def render(self, segments: list[SegmentInfo], *, ended: bool) -> str:
        lines = [
            "#EXTM3U",
            "#EXT-X-VERSION:3",
            "#EXT-X-PLAYLIST-TYPE:EVENT",
            f"#EXT-X-TARGETDURATION:{self.target_duration(segments)}",
            "#EXT-X-MEDIA-SEQUENCE:0",
        ]
        for seg in segments:
            if seg.discontinuity:
                lines.append("#EXT-X-DISCONTINUITY")
            lines.append(f"#EXTINF:{seg.duration:.3f},")
            lines.append(seg.name)
        if ended:
            lines.append("#EXT-X-ENDLIST")
        return "\n".join(lines) + "\n"

    def write(self, segments: list[SegmentInfo], *, ended: bool = False) -> None:
        atomic_write_text(self.path, self.render(segments, ended=ended))

    def load(self) -> list[SegmentInfo]:
        """The segments an existing playlist lists (empty when there is none)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        return parse_playlist(text, self.path.parent)


_EXTINF = re.compile(r"#EXTINF:\s*([0-9.]+)")


def parse_playlist(text: str, directory: Path) -> list[SegmentInfo]:
    """Segments of a media playlist written by :class:`HlsPlaylist` (unknown tags ignored)."""
    segments: list[SegmentInfo] = []
    sequence = 0
    duration: float | None = None
    discontinuity = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#EXT-X-MEDIA-SEQUENCE:"):
            sequence = int(line.split(":", 1)[1])
        elif line == "#EXT-X-DISCONTINUITY":
            discontinuity = True
        elif (m := _EXTINF.match(line)) is not None:
            duration = float(m.group(1))
        elif not line.startswith("#"):
            path = directory / line
            size = path.stat().st_size if path.exists() else 0
            segments.append(
                SegmentInfo(
                    index=sequence + len(segments),
                    name=line,
                    path=path,
                    duration=duration or 0.0,
                    discontinuity=discontinuity,
                    size=size,
                )
            )
            duration, discontinuity = None, False
    return segments


def last_pts(path: Path) -> int | None:
    """The largest PTS end (90 kHz) in a TS file, to keep timestamps rising after a resume."""
    try:
        with av.open(str(path)) as container:
            end = None
            for packet in container.demux():
                if packet.pts is not None and packet.stream.time_base == TS_TIME_BASE:
                    stop = packet.pts + (packet.duration or 0)
                    end = stop if end is None else max(end, stop)
            return end
    except (av.FFmpegError, OSError):
        return None


class TsSegmentWriter:
    """One MPEG-TS segment, muxed by PyAV's ``mpegts`` muxer without any codec context.

    Streams are made with ``add_mux_stream``: the muxer gets codec parameters only, so nothing is
    encoded or decoded here. H.264 arrives in Annex B with SPS/PPS in band; AAC arrives with ADTS
    headers, which the TS muxer carries as they are (it needs no extradata then).
    """

    def __init__(self, path: Path, *, video: bool, audio: bool) -> None:
        self.path = path
        self._tmp = path.with_name(path.name + ".part")
        try:
            self._container = av.open(str(self._tmp), "w", format="mpegts")
            self._video = self._container.add_mux_stream("h264") if video else None
            self._audio = self._container.add_mux_stream("aac", rate=48_000) if audio else None
        except (av.FFmpegError, OSError) as exc:
            raise RecordingError(f"cannot open segment {path.name}: {exc}") from exc
        self._closed = False
        self.packets = 0

    def write(self, kind: str, data: bytes, pts: int, *, keyframe: bool = False) -> None:
        """Mux one video access unit or one ADTS audio frame at ``pts`` (90 kHz ticks)."""
        stream = self._video if kind == "video" else self._audio
        if stream is None:
            raise ValueError(f"segment {self.path.name} has no {kind} stream")
        packet = av.Packet(data)
        packet.stream = stream
        packet.time_base = TS_TIME_BASE
        packet.pts = packet.dts = pts
        packet.is_keyframe = keyframe
        try:
            self._container.mux(packet)
        except (av.FFmpegError, OSError) as exc:
            raise RecordingError(f"writing segment {self.path.name} failed: {exc}") from exc
        self.packets += 1

    def close(self) -> int:
        """Finish the file, make it durable under its final name; returns its size in bytes."""
        self._closed = True
        try:
            self._container.close()
            fd = os.open(self._tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(self._tmp, self.path)
            fsync_dir(self.path.parent)
            return self.path.stat().st_size
        except (av.FFmpegError, OSError) as exc:
            raise RecordingError(f"closing segment {self.path.name} failed: {exc}") from exc

    def abort(self) -> None:
        """Drop the unfinished file."""
        if self._closed:
            return
        self._closed = True
        try:
            self._container.close()
        except (av.FFmpegError, OSError):
            pass
        self._tmp.unlink(missing_ok=True)


def resume_base(segments: list[SegmentInfo]) -> int:
    """Ticks to add to the timestamps of a resumed recording so they start 1 s past the old
    ones. The last segment is read while it is still in the spool; once stored (and removed
    from the spool) its end is worked out from the playlist: every earlier resume left a 1 s
    gap, behind a #EXT-X-DISCONTINUITY."""
    if not segments:
        return 0
    old_end = last_pts(segments[-1].path) if segments[-1].path.exists() else None
    if old_end is None:
        listed = round(sum(s.duration for s in segments) * TS_CLOCK)
        gaps = sum(s.discontinuity for s in segments) * TS_CLOCK
        old_end = PTS_ORIGIN + listed + gaps + TS_CLOCK // 10  # margin for rounded durations
    return max(0, old_end + TS_CLOCK - PTS_ORIGIN)


def close_segment(
    writer: TsSegmentWriter, seq: int, start: int, end: int, discontinuity: bool
) -> SegmentInfo:
    """Close a segment file (fsynced, renamed into place) and describe it for the playlist;
    ``start``/``end`` are its first and past-the-last 90 kHz timestamps."""
    size = writer.close()
    return SegmentInfo(
        index=seq,
        name=writer.path.name,
        path=writer.path,
        duration=max(end - start, 0) / TS_CLOCK,
        discontinuity=discontinuity,
        size=size,
    )


def add_segment(
    segments: list[SegmentInfo],
    playlist: HlsPlaylist,
    info: SegmentInfo,
    *,
    ended: bool,
    on_segment: Callable[[SegmentInfo], None] | None,
) -> SegmentInfo:
    """List a closed segment: rewrite the playlist with it, then announce it (the order the
    uploads rely on: a segment is announced only once the spool's playlist names it)."""
    segments.append(info)
    playlist.write(segments, ended=ended)
    if on_segment is not None:
        on_segment(info)
    return info
