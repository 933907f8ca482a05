"""MPEG-TS segments of an HLS recording, and their life cycle, shared by source and mix.

Durability rules (a crash must never leave a listed segment truncated):

- a segment is written to ``{name}.part``, closed, fsynced, then renamed to ``{name}``;
- the playlist is rewritten (atomically, see :mod:`cloudrec.media.hls`) only after the file
  is complete, and a segment is announced (``on_segment``) only once the playlist names it:
  the order the uploads rely on.

:class:`HlsSegmenter` is that life cycle, written once: the playlist (loaded again on a resume,
whose timestamps then start 1 s past the old ones behind ``#EXT-X-DISCONTINUITY``), stale
``.part`` files removed, the open segment, closing and listing it. When to cut is the caller's
policy (:mod:`cloudrec.media.source`, :mod:`cloudrec.media.mix.output`).

A resume never reuses a name: besides the playlist it finds, it reads ``.{basename}.next``
in the spool (:func:`reserve_sequence`: the next number a task resumed elsewhere knows of, e.g.
from the task store, when no playlist could be fetched) and numbers on from the larger; a
resumed recording with no listed segment but a reserved number starts after
``#EXT-X-DISCONTINUITY`` too.

The room timeline: the recorder tells the segmenter which wall-clock time a PTS stands for
(:meth:`HlsSegmenter.set_clock`); every segment opened after that is listed with the time of
its first frame (``#EXT-X-PROGRAM-DATE-TIME``, :attr:`SegmentInfo.date`).
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Generic, TypeVar

import av

from cloudrec.errors import RecordingError
from cloudrec.media.fmp4 import Fmp4SegmentWriter
from cloudrec.media.hls import (
    PTS_ORIGIN,
    TS_CLOCK,
    HlsPlaylist,
    SegmentInfo,
    atomic_write_bytes,
    fsync_dir,
    init_name,
    segment_name,
)

TS_TIME_BASE = Fraction(1, TS_CLOCK)


def unix_time(monotonic: float) -> float:
    """The wall-clock time (s since the epoch) of a ``time.monotonic()`` reading."""
    return time.time() - (time.monotonic() - monotonic)


def last_pts(path: Path) -> int | None:
    """The largest PTS end (90 kHz) in a TS file, to keep timestamps rising after a resume
    (None for an fMP4 segment, which cannot be read without its initialisation section)."""
    if path.suffix != ".ts":
        return None
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

    def write(self, kind: str, data: bytes, pts: int, *, keyframe: bool = False,
              duration: int | None = None) -> None:
        """Mux one video access unit or one ADTS audio frame at ``pts`` (90 kHz ticks);
        ``duration`` as for fMP4 (MPEG-TS samples have none: ignored)."""
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


def next_file(spool_dir: Path, basename: str) -> Path:
    return Path(spool_dir) / f".{basename}.next"


def reserve_sequence(spool_dir: Path, basename: str, seq: int) -> None:
    """Make a resume of ``basename`` in ``spool_dir`` number its segments from ``seq`` on at
    least (see the module docstring)."""
    path = next_file(spool_dir, basename)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{seq}\n", encoding="utf-8")


def reserved_sequence(spool_dir: Path, basename: str) -> int:
    try:
        return max(0, int(next_file(spool_dir, basename).read_text(encoding="utf-8").strip()))
    except (OSError, ValueError):
        return 0


@dataclass(slots=True)
class OpenSegment:
    """The segment being written; timestamps in 90 kHz ticks."""

    seq: int  # media sequence number
    writer: TsSegmentWriter | Fmp4SegmentWriter
    start: int  # PTS of its first packet
    discontinuity: bool  # to be listed after #EXT-X-DISCONTINUITY
    end: int  # end of the latest packet written, any track


S = TypeVar("S", bound=OpenSegment)


class HlsSegmenter(Generic[S]):
    """The playlist and segments of one recording in ``spool_dir`` (see the module docstring).

    ``segment_type`` is the class of the open segment (:class:`OpenSegment` or a subclass that
    keeps the caller's own state of a segment)."""

    def __init__(
        self,
        spool_dir: Path,
        basename: str,
        *,
        video: bool,
        audio: bool,
        segment_seconds: float,
        segment_type: type[S],
        on_segment: Callable[[SegmentInfo], None] | None = None,
        resume: bool = False,
        fmp4: bool = False,
    ) -> None:
        self.directory = Path(spool_dir)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.basename = basename
        self._video, self._audio = video, audio
        self._segment_type = segment_type
        self._on_segment = on_segment
        self.playlist_path = self.directory / f"{basename}.m3u8"
        self.fmp4 = fmp4  # fMP4 segments (H.264 + Opus) instead of MPEG-TS
        self._ext = "m4s" if fmp4 else "ts"
        self._playlist = HlsPlaylist(self.playlist_path, segment_seconds, fmp4=fmp4)
        self.segments: list[SegmentInfo] = self._playlist.load() if resume else []
        self._init: tuple[str, bytes] | None = None  # fMP4: the latest initialisation section
        self._init_names: dict[bytes, str] = {}  # fMP4: every section written, by content
        for name in dict.fromkeys(s.init for s in self.segments if s.init is not None):
            if (self.directory / name).exists():
                self._init = (name, (self.directory / name).read_bytes())
                self._init_names[self._init[1]] = name
        self.base = resume_base(self.segments)  # PTS offset past a resumed recording's end
        listed = self.segments[-1].index + 1 if self.segments else 0
        self._seq = max(listed, reserved_sequence(spool_dir, basename)) if resume else 0
        # the next segment starts a new run
        self.next_discontinuity = bool(self.segments) or self._seq > 0
        for stale in self.directory.glob(f"{glob.escape(basename)}_*.{self._ext}.part"):
            stale.unlink(missing_ok=True)
        self._playlist.write(self.segments)  # valid from the start, even with no segment yet
        self.open: S | None = None
        self._clock: tuple[int, float] | None = None  # (PTS, its wall time)
        self._dates: dict[int, float] = {}  # sequence number -> wall time of its first frame

    def set_clock(self, pts: int, unix: float) -> None:
        """PTS ``pts`` (90 kHz) is wall-clock time ``unix`` (s since the epoch) from now on."""
        self._clock = (pts, unix)

    def date_of(self, pts: int) -> float | None:
        """The wall-clock time of PTS ``pts`` (None before :meth:`set_clock`)."""
        if self._clock is None:
            return None
        return self._clock[1] + (pts - self._clock[0]) / TS_CLOCK

    @property
    def duration(self) -> float:
        """Seconds recorded so far (closed segments plus the open one)."""
        seg = self.open  # read once: a monitoring thread may ask while the recorder writes
        open_ticks = seg.end - seg.start if seg is not None else 0
        return sum(s.duration for s in list(self.segments)) + open_ticks / TS_CLOCK

    def start(self, pts: int, discontinuity: bool) -> S:
        """Open the next segment (its ``.part`` file) at ``pts``."""
        path = self.directory / segment_name(self.basename, self._seq, self._ext)
        writer: TsSegmentWriter | Fmp4SegmentWriter
        date = self.date_of(pts)
        if self.fmp4:
            writer = Fmp4SegmentWriter(path, video=self._video, audio=self._audio,
                                       template=self._init[1] if self._init else None,
                                       date=date)
        else:
            writer = TsSegmentWriter(path, video=self._video, audio=self._audio)
        seg = self._segment_type(self._seq, writer, pts, discontinuity, pts)
        if date is not None:
            self._dates[seg.seq] = date
        self.open = seg
        self._seq += 1
        self.next_discontinuity = False
        return seg

    def finish(self, end: int, *, final: bool = False) -> SegmentInfo:
        """Close the open segment at ``end`` (past its last packet): fsynced and renamed into
        place, listed in the playlist (ended with #EXT-X-ENDLIST when ``final``), announced."""
        seg = self.open
        assert seg is not None
        self.open = None
        size = seg.writer.close()
        init = self._init_for(seg) if isinstance(seg.writer, Fmp4SegmentWriter) else None
        info = SegmentInfo(
            index=seg.seq,
            name=seg.writer.path.name,
            path=seg.writer.path,
            duration=max(end - seg.start, 0) / TS_CLOCK,
            discontinuity=seg.discontinuity,
            size=size,
            init=init,
            date=self._dates.pop(seg.seq, None),
        )
        self.segments.append(info)
        self._playlist.write(self.segments, ended=final)
        if self._on_segment is not None:
            self._on_segment(info)
        return info

    def _init_for(self, seg: OpenSegment) -> str | None:
        """The initialisation section a closed fMP4 segment needs: the current one, one written
        before with the same content, or a new file (durable before the playlist names it)."""
        assert isinstance(seg.writer, Fmp4SegmentWriter)
        data = seg.writer.init
        if not data:
            return self._init[0] if self._init is not None else None
        if self._init is None or self._init[1] != data:
            name = self._init_names.get(data)
            if name is None or not (self.directory / name).exists():
                name = name or init_name(self.basename, seg.seq if self._init_names else 0)
                atomic_write_bytes(self.directory / name, data)
                self._init_names[data] = name
            self._init = (name, data)
        return self._init[0]

    def merge(self, returned: list[SegmentInfo]) -> list[SegmentInfo]:
        """List segments a node that came back stored for this recording (numbers this one
        never uses: see the module docstring) in their place by number; returns those added.
        The playlist is rewritten when any was."""
        listed = {s.name for s in self.segments}
        added = [s for s in returned if s.name not in listed]
        if added:
            self.segments[:] = sorted([*self.segments, *added], key=lambda s: s.index)
            self._playlist.write(self.segments)
        return added

    def end_playlist(self) -> None:
        """End the playlist with #EXT-X-ENDLIST (no segment open)."""
        self._playlist.write(self.segments, ended=True)
