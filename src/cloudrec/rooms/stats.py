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


def picture_size(codec: str, data: bytes) -> tuple[int, int] | None:
    """The picture size in a key frame's headers, or None when it cannot be read."""
    try:
        if codec == "h264":
            for nal in _annexb_nals(data):
                if nal and nal[0] & 0x1F == 7:
                    return h264_sps_size(nal)
        elif codec == "vp8" and len(data) >= 10 and data[3:6] == b"\x9d\x01\x2a":
            return (int.from_bytes(data[6:8], "little") & 0x3FFF,
                    int.from_bytes(data[8:10], "little") & 0x3FFF)
    except (IndexError, ValueError):
        return None
    return None


def _annexb_nals(data: bytes) -> list[bytes]:
    parts = data.split(b"\x00\x00\x01")
    return [p.rstrip(b"\x00") for p in parts[1:]]


class _Bits:
    def __init__(self, data: bytes) -> None:
        # drop emulation prevention bytes (00 00 03 → 00 00)
        self.data = data.replace(b"\x00\x00\x03", b"\x00\x00")
        self.pos = 0

    def bit(self) -> int:
        byte = self.data[self.pos >> 3]
        value = (byte >> (7 - (self.pos & 7))) & 1
        self.pos += 1
        return value

    def bits(self, n: int) -> int:
        value = 0
        for _ in range(n):
            value = (value << 1) | self.bit()
        return value

    def ue(self) -> int:
        zeros = 0
        while self.bit() == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("bad exp-Golomb code")
        return (1 << zeros) - 1 + self.bits(zeros)

    def se(self) -> int:
        v = self.ue()
        return (v + 1) // 2 if v & 1 else -(v // 2)


def h264_sps_size(sps: bytes) -> tuple[int, int]:
    """Width and height (after cropping) from an H.264 sequence parameter set NAL unit."""
    r = _Bits(sps[1:])
    profile = r.bits(8)
    r.bits(16)  # constraint flags, level
    r.ue()  # seq_parameter_set_id
    chroma = 1
    if profile in (100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135):
        chroma = r.ue()
        if chroma == 3:
            r.bit()
        r.ue()
        r.ue()
        r.bit()
        if r.bit():  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma != 3 else 12):
                if r.bit():
                    last, nxt = 8, 8
                    for _ in range(16 if i < 6 else 64):
                        if nxt:
                            nxt = (last + r.se() + 256) % 256
                        last = nxt or last
    r.ue()  # log2_max_frame_num_minus4
    poc_type = r.ue()
    if poc_type == 0:
        r.ue()
    elif poc_type == 1:
        r.bit()
        r.se()
        r.se()
        for _ in range(r.ue()):
            r.se()
    r.ue()  # max_num_ref_frames
    r.bit()
    width_mbs = r.ue() + 1
    height_units = r.ue() + 1
    frame_mbs_only = r.bit()
    if not frame_mbs_only:
        r.bit()
    r.bit()  # direct_8x8_inference_flag
    crop = (0, 0, 0, 0)
    if r.bit():
        crop = (r.ue(), r.ue(), r.ue(), r.ue())
    sub_w, sub_h = (2, 2) if chroma == 1 else (2, 1) if chroma == 2 else (1, 1)
    unit_h = sub_h * (2 - frame_mbs_only)
    width = width_mbs * 16 - sub_w * (crop[0] + crop[1])
    height = height_units * 16 * (2 - frame_mbs_only) - unit_h * (crop[2] + crop[3])
    return width, height
