"""What a publication sends, measured from the encoded frames it already handles: frames
and bytes per kind, frame rate and bit rate over the last seconds, and the video's picture size
read from the bitstream's headers (H.264 SPS, VP8 key frame header): nothing is decoded.

The cost on the per-frame path (:meth:`~cloudrec.rooms.publication.Publication.write`) is
two additions and, once per second, a rate update.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from cloudrec.media.codecs import picture_size

WINDOW_S = 2.0


@dataclass
class KindStats:
    codec: str = ""
    frames: int = 0
    bytes: int = 0
    fps: float = 0.0
    kbps: float = 0.0
    _mark_at: float = 0.0
    _mark_frames: int = 0
    _mark_bytes: int = 0

    def add(self, size: int, now: float) -> None:
        self.frames += 1
        self.bytes += size
        if not self._mark_at:
            self._mark_at = now
        elif now - self._mark_at >= WINDOW_S:
            elapsed = now - self._mark_at
            self.fps = (self.frames - self._mark_frames) / elapsed
            self.kbps = (self.bytes - self._mark_bytes) * 8 / 1000 / elapsed
            self._mark_at, self._mark_frames, self._mark_bytes = now, self.frames, self.bytes


@dataclass
class PublicationStats:
    """Per publication: ``add(kind, codec, data, keyframe)`` for every received frame."""

    connected_at: float = field(default_factory=time.time)
    width: int | None = None
    height: int | None = None
    kinds: dict[str, KindStats] = field(default_factory=dict)

    def add(self, kind: str, codec: str, data: bytes, keyframe: bool, now: float) -> None:
        stats = self.kinds.get(kind)
        if stats is None:
            stats = self.kinds[kind] = KindStats(codec)
        stats.add(len(data), now)
        if keyframe and kind == "video":
            size = picture_size(codec, data)
            if size is not None:
                self.width, self.height = size

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"connected_at": self.connected_at, "width": self.width,
                               "height": self.height}
        for kind, s in self.kinds.items():
            out[kind] = {"codec": s.codec, "frames": s.frames, "bytes": s.bytes,
                         "fps": round(s.fps, 2), "kbps": round(s.kbps, 1)}
        return out
