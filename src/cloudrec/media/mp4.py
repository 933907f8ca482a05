"""An MP4 of a whole HLS recording: its MPEG-TS segments remuxed into one file, ``moov`` first.

Remux only: packets are copied from the segments into the MP4 muxer, never decoded or encoded
(H.264 Annex B becomes length-prefixed samples and ADTS AAC becomes raw AAC inside FFmpeg's
muxer, which inserts ``aac_adtstoasc`` by itself). ``movflags=+faststart`` moves the ``moov`` box
in front of ``mdat`` when the file is finished, so a player can start before it has it all.

Memory: segments are opened one at a time, in playlist order, and their packets streamed into
the muxer, so a recording of hours needs no more memory than a segment's worth of interleaving
plus the sample tables; the MP4 is written to disk as it grows (faststart's second pass copies
it on disk too).

Timeline: within a run of segments (between two ``#EXT-X-DISCONTINUITY``) the TS timestamps are
continuous; a new run (a resume after a restart, a republish, a pause) may start anywhere. Each
run is shifted so that it starts where the previous one ended: the MP4 has the playlist's
duration (the sum of its ``#EXTINF``), with no gap for the time between runs, and its
timestamps rise across every discontinuity. A packet that would still not rise (a stray one
of a damaged segment) is moved just past its predecessor: muxers refuse non-monotonic DTS.

Tracks: the MP4 has a video track when some segment carries decodable video parameters and an
audio track when some carries audio; the parameters of the first segment that has them are the
track's. A later run with another picture size (a mix whose output changed) keeps its SPS/PPS
in band, which decoders follow.

fMP4 segments (a recording that keeps Opus) are read joined to their initialisation section;
H.264 and Opus go into the MP4 as they are.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path

import av

from cloudrec.media.hls import TS_CLOCK, fsync_dir

log = logging.getLogger(__name__)

TIME_BASE = Fraction(1, TS_CLOCK)
KINDS = ("video", "audio")


@dataclass(frozen=True, slots=True)
class Mp4Source:
    """One segment to remux: its playlist name and whether a discontinuity precedes it."""

    name: str
    discontinuity: bool
    init: str | None = None  # fMP4: the initialisation section it is read with


@dataclass(frozen=True, slots=True)
class Mp4Info:
    """What was written: the file, its size, its duration and what went into it."""

    path: Path
    size: int
    duration: float  # seconds, from the timestamps written
    tracks: tuple[str, ...]  # "video", "audio"
    segments: int  # segments remuxed
    skipped: tuple[str, ...]  # segments that could not be read (missing, damaged)


# A context manager factory: the segment's local path while it is read, or None when it is gone.
SegmentOpener = Callable[[str], AbstractContextManager["Path | None"]]


class Mp4Error(Exception):
    """No MP4 can be made (no segment could be read, nothing to write)."""


def _usable(stream: av.stream.Stream) -> bool:
    """A stream whose parameters the MP4 muxer can write a track header from."""
    if isinstance(stream, av.VideoStream):
        return bool(stream.codec_context.width and stream.codec_context.height)
    if isinstance(stream, av.AudioStream):
        return bool(stream.codec_context.sample_rate)
    return False


def _streams(container: av.container.InputContainer, kinds: Iterable[str]
             ) -> dict[str, av.stream.Stream]:
    found: dict[str, av.stream.Stream] = {}
    for stream in container.streams:
        if stream.type in kinds and stream.type not in found and _usable(stream):
            found[stream.type] = stream
    return found


@contextlib.contextmanager
def _open_source(open_segment: SegmentOpener, source: Mp4Source, dest: Path
                 ) -> Iterator[Path | None]:
    """The segment's local path; an fMP4 segment is joined to its initialisation section
    first (in a temporary file beside ``dest``), as a player reads it."""
    if source.init is None:
        with open_segment(source.name) as path:
            yield path
        return
    joined = dest.with_name(f".join-{source.name}.mp4")
    with open_segment(source.init) as init, open_segment(source.name) as path:
        if init is None or path is None:
            yield None
            return
        joined.write_bytes(init.read_bytes() + path.read_bytes())
    try:
        yield joined
    finally:
        joined.unlink(missing_ok=True)


def remux_to_mp4(
    sources: list[Mp4Source],
    dest: Path,
    open_segment: SegmentOpener,
    *,
    kinds: Iterable[str] = KINDS,
    creation_time: float | None = None,
) -> Mp4Info:
    """Remux ``sources`` (in order) into ``dest``; returns what was written.

    ``open_segment(name)`` is a context manager factory yielding the segment's local path (a
    file of the spool, or a copy fetched from the store) or None when it is gone. ``dest`` is
    written under ``{dest}.part`` and renamed into place once complete and fsynced. Raises
    Mp4Error when no segment had a track to write. ``creation_time`` (s since the epoch: the
    first frame's wall-clock time) is written as the file's ``creation_time``.
    """
    wanted = tuple(k for k in KINDS if k in set(kinds))
    part = dest.with_name(dest.name + ".part")
    part.unlink(missing_ok=True)
    with ExitStack() as opened:  # the template segments stay open until the tracks exist
        templates = _find_templates(sources, open_segment, wanted, opened, dest)
        if not templates:
            raise Mp4Error("no segment has media to write")
        writer = _Writer(part, templates, creation_time)
    skipped: list[str] = []
    written = 0
    try:
        for source in sources:
            with _open_source(open_segment, source, dest) as path:
                if path is None:
                    skipped.append(source.name)
                    log.error("MP4 %s: segment %s cannot be read; left out", dest.name,
                              source.name)
                    continue
                try:
                    writer.add_segment(path, new_run=source.discontinuity)
                except (av.FFmpegError, OSError) as exc:
                    skipped.append(source.name)
                    log.error("MP4 %s: segment %s is damaged (%s); left out", dest.name,
                              source.name, exc)
                    continue
                written += 1
        duration = writer.close()
    except BaseException:
        writer.abort()
        part.unlink(missing_ok=True)
        raise
    fd = os.open(part, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(part, dest)
    fsync_dir(dest.parent)
    return Mp4Info(dest, dest.stat().st_size, duration, tuple(templates), written,
                   tuple(skipped))


def _find_templates(
    sources: list[Mp4Source],
    open_segment: SegmentOpener,
    wanted: tuple[str, ...],
    opened: ExitStack,
    dest: Path,
) -> dict[str, av.stream.Stream]:
    """The parameters of each track: from the first segment that has usable ones. Usually the
    first segment has them all; an audio-led start (no video yet) looks further."""
    templates: dict[str, av.stream.Stream] = {}
    for source in sources:
        missing = [k for k in wanted if k not in templates]
        if not missing:
            break
        with ExitStack() as this:
            path = this.enter_context(_open_source(open_segment, source, dest))
            if path is None:
                continue
            try:
                container = this.enter_context(av.open(str(path)))
            except (av.FFmpegError, OSError):
                continue
            found = _streams(container, missing)
            if found:
                templates.update(found)
                opened.enter_context(this.pop_all())
    return {kind: templates[kind] for kind in KINDS if kind in templates}


class _Writer:
    """The MP4 being written: output tracks, the running offset, per-track last DTS."""

    def __init__(self, path: Path, templates: dict[str, av.stream.Stream],
                 creation_time: float | None = None) -> None:
        self._container = av.open(str(path), "w", format="mp4",
                                  options={"movflags": "+faststart"})
        if creation_time is not None:
            moment = datetime.fromtimestamp(creation_time, UTC)
            self._container.metadata["creation_time"] = moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        self._out: dict[str, av.stream.Stream] = {}
        for kind, template in templates.items():
            stream = self._container.add_stream_from_template(template)
            stream.time_base = TIME_BASE
            self._out[kind] = stream
        self._offset = 0  # ticks added to the current run's timestamps
        self._end = 0  # end of the latest packet written (output ticks)
        self._last_dts: dict[str, int] = {}
        self._step: dict[str, int] = {}  # latest DTS step per track: a packet's duration
        self._started = False
        self._closed = False

    def add_segment(self, path: Path, *, new_run: bool) -> None:
        with av.open(str(path)) as container:
            streams = {s.index: s.type for s in container.streams if s.type in self._out}
            if not streams:
                return
            if new_run or not self._started:
                starts = [int(s.start_time * s.time_base / TIME_BASE)
                          for s in container.streams
                          if s.index in streams and s.start_time is not None
                          and s.time_base is not None]
                if starts:
                    self._offset = self._end - min(starts)
                    self._started = True
            for packet in container.demux(*[container.streams[i] for i in streams]):
                if packet.size == 0 or (packet.dts is None and packet.pts is None):
                    continue
                self._mux(streams[packet.stream.index], packet)

    def _mux(self, kind: str, packet: av.Packet) -> None:
        scale = packet.time_base / TIME_BASE
        stamp = packet.dts if packet.dts is not None else packet.pts
        assert stamp is not None  # add_segment skips packets with neither
        dts = int(stamp * scale) + self._offset
        pts = int((packet.pts if packet.pts is not None else stamp) * scale) + self._offset
        last = self._last_dts.get(kind)
        if last is not None:
            if dts <= last:
                shift = last + 1 - dts
                dts += shift
                pts += shift
            else:
                self._step[kind] = dts - last
        pts = max(pts, dts)
        duration = int((packet.duration or 0) * scale) or self._step.get(kind, 0)
        self._last_dts[kind] = dts
        self._end = max(self._end, pts + duration)
        packet.stream = self._out[kind]
        packet.time_base = TIME_BASE
        packet.dts, packet.pts = dts, pts
        if duration:
            packet.duration = duration
        self._container.mux(packet)

    def close(self) -> float:
        """Finish the file (faststart moves ``moov`` in front); returns its duration in s."""
        self._closed = True
        self._container.close()
        return self._end / TS_CLOCK

    def abort(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self._container.close()
            except (av.FFmpegError, OSError, ValueError):
                pass


def atoms(path: Path) -> list[str]:
    """The top-level box types of an MP4 file, in order (``moov`` before ``mdat`` when the file
    is faststart)."""
    names: list[str] = []
    size_total = path.stat().st_size
    with open(path, "rb") as f:
        offset = 0
        while offset + 8 <= size_total:
            f.seek(offset)
            header = f.read(16)
            size = int.from_bytes(header[:4], "big")
            names.append(header[4:8].decode("latin-1"))
            if size == 1:
                size = int.from_bytes(header[8:16], "big")
            elif size == 0:
                break
            if size < 8:
                break
            offset += size
    return names
