"""HLS playlists: the EVENT playlist of a recording and the segments it lists.

Every segment is listed after ``#EXT-X-PROGRAM-DATE-TIME`` when its first frame's wall-clock
time is known (the room's clock: see :meth:`cloudrec.media.segmenter.HlsSegmenter.set_clock`),
and a playlist read back keeps it.

The playlist is written to a temporary file, fsynced and renamed over the old one, so readers
see the old or the new list, never half of one. The segment files themselves are
:mod:`cloudrec.media.segmenter`'s. No PyAV here: the control plane may read playlists.
"""

from __future__ import annotations

import functools
import math
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

TS_CLOCK = 90_000  # MPEG-TS timestamps are in 90 kHz ticks
PTS_ORIGIN = TS_CLOCK  # recordings start at 1 s: the AAC priming frame never goes negative


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    """One closed segment, as listed in the playlist."""

    index: int  # media sequence number
    name: str  # file name, e.g. "10034_room_rec_u1_00003.ts"
    path: Path
    duration: float  # seconds, from integer PTS
    discontinuity: bool  # listed after #EXT-X-DISCONTINUITY
    size: int  # bytes
    init: str | None = None  # fMP4: the initialisation section it needs (#EXT-X-MAP)
    date: float | None = None  # wall-clock time of its first frame (s since the epoch)


@functools.lru_cache(maxsize=1024)  # the playlist is rendered whole at each segment
def program_date(unix: float) -> str:
    """``#EXT-X-PROGRAM-DATE-TIME``'s value: ISO 8601 in UTC, to the millisecond."""
    moment = datetime.fromtimestamp(round(unix * 1000) / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_program_date(value: str) -> float | None:
    try:
        return datetime.fromisoformat(value.strip().replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def segment_name(basename: str, seq: int, ext: str = "ts") -> str:
    return f"{basename}_{seq:05d}.{ext}"


def init_name(basename: str, seq: int) -> str:
    """An fMP4 recording's initialisation section: ``{base}_init.mp4`` for the first one,
    ``{base}_{seq:05d}_init.mp4`` for one that a later segment ``seq`` brings (new tracks)."""
    return f"{basename}_init.mp4" if seq == 0 else f"{basename}_{seq:05d}_init.mp4"


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


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``, durable, readers seeing the old or the new file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


class HlsPlaylist:
    """An EVENT playlist (``#EXT-X-PLAYLIST-TYPE:EVENT``, media sequence 0, never trimmed)."""

    def __init__(self, path: Path, segment_seconds: float, *, fmp4: bool = False) -> None:
        self.path = path
        self.segment_seconds = segment_seconds
        self.fmp4 = fmp4  # fMP4 segments: version 7, #EXT-X-MAP before the segments

    def target_duration(self, segments: list[SegmentInfo]) -> int:
        longest = max((s.duration for s in segments), default=0.0)
        return max(math.ceil(self.segment_seconds), math.ceil(round(longest, 3)))

    def render(self, segments: list[SegmentInfo], *, ended: bool) -> str:
        lines = [
            "#EXTM3U",
            "#EXT-X-VERSION:7" if self.fmp4 else "#EXT-X-VERSION:3",
            "#EXT-X-PLAYLIST-TYPE:EVENT",
            f"#EXT-X-TARGETDURATION:{self.target_duration(segments)}",
            "#EXT-X-MEDIA-SEQUENCE:0",
        ]
        init = None
        for seg in segments:
            if seg.discontinuity:
                lines.append("#EXT-X-DISCONTINUITY")
            if seg.init is not None and seg.init != init:
                init = seg.init
                lines.append(f'#EXT-X-MAP:URI="{init}"')
            if seg.date is not None:
                lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{program_date(seg.date)}")
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
_MAP = re.compile(r'#EXT-X-MAP:URI="([^"]+)"')
_NUMBERED = re.compile(r"_(\d{5,})\.(?:ts|m4s)$")


def parse_playlist(text: str, directory: Path) -> list[SegmentInfo]:
    """Segments of a media playlist written by :class:`HlsPlaylist` (unknown tags ignored)."""
    segments: list[SegmentInfo] = []
    sequence = 0
    duration: float | None = None
    discontinuity = False
    init: str | None = None
    date: float | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#EXT-X-MEDIA-SEQUENCE:"):
            sequence = int(line.split(":", 1)[1])
        elif line == "#EXT-X-DISCONTINUITY":
            discontinuity = True
        elif line.startswith("#EXT-X-PROGRAM-DATE-TIME:"):
            date = parse_program_date(line.split(":", 1)[1])
        elif (m := _EXTINF.match(line)) is not None:
            duration = float(m.group(1))
        elif (m := _MAP.match(line)) is not None:
            init = m.group(1)
        elif not line.startswith("#"):
            path = directory / line
            size = path.stat().st_size if path.exists() else 0
            numbered = _NUMBERED.search(line)  # a resume elsewhere may have skipped numbers
            segments.append(
                SegmentInfo(
                    index=int(numbered.group(1)) if numbered else sequence + len(segments),
                    name=line,
                    path=path,
                    duration=duration or 0.0,
                    discontinuity=discontinuity,
                    size=size,
                    init=init,
                    date=date,
                )
            )
            duration, discontinuity, date = None, False, None
    return segments
