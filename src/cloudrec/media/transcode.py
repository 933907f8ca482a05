"""Video that does not fit MPEG-TS as it is (VP8, ...) → H.264 with libx264.

Used only when remuxing is impossible: decode, then libx264 ``veryfast``/``zerolatency`` at
about 1 Mbps. Keyframes are placed by time (an IDR every 2 s of PTS) and on demand
(``force_idr``), so segments can be cut where the recorder wants without asking the publisher.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import av
from av.video.frame import PictureType

TS_TIME_BASE = Fraction(1, 90_000)
GOP_TICKS = 2 * 90_000  # an IDR at least every 2 s of media
_DECODERS = {"vp8": "vp8", "vp9": "vp9", "av1": "libdav1d", "h265": "hevc"}


class VideoTranscoder:
    """Decode one publisher's video and encode it to H.264 Annex B access units."""

    encoder_name = "libx264"

    def __init__(self, codec: str, *, bit_rate: int = 1_000_000, fps_hint: int = 30) -> None:
        self._codec = codec
        self._bit_rate = bit_rate
        self._fps_hint = fps_hint
        self._decoder = self._new_decoder()
        self._encoder: av.VideoCodecContext | None = None
        self._last_idr: int | None = None
        self.opened = False  # whether the encoder was opened

    def _new_decoder(self) -> av.VideoCodecContext:
        decoder = av.CodecContext.create(_DECODERS.get(self._codec, self._codec), "r")
        if not isinstance(decoder, av.VideoCodecContext):
            raise ValueError(f"{self._codec!r} is not a video codec")
        return decoder

    def reset(self) -> None:
        """A new publication: fresh decoder state (the encoder keeps going)."""
        self._decoder = self._new_decoder()

    def _open_encoder(self, width: int, height: int) -> av.VideoCodecContext:
        enc = av.CodecContext.create("libx264", "w")
        enc.width = width - width % 2
        enc.height = height - height % 2
        enc.pix_fmt = "yuv420p"
        enc.time_base = TS_TIME_BASE
        enc.framerate = Fraction(self._fps_hint, 1)
        enc.bit_rate = self._bit_rate
        enc.gop_size = 10 * self._fps_hint  # a fallback: IDRs are placed by time below
        enc.options = {
            "preset": "veryfast",
            "tune": "zerolatency",
            "forced-idr": "1",
            "x264-params": "repeat-headers=1",
        }
        enc.open()
        self.opened = True
        return enc

    def transcode(self, data: bytes, pts: int, *, force_idr: bool = False) -> list[
        tuple[bytes, int, bool]
    ]:
        """One encoded input frame at ``pts`` (90 kHz) → [(H.264 access unit, pts, is IDR)].

        Returns [] for a frame that cannot be decoded (e.g. a delta frame before the first
        key frame); the caller then asks the publisher for a key frame.
        """
        try:
            frames = self._decoder.decode(av.Packet(data))
        except av.FFmpegError:
            return []
        out: list[tuple[bytes, int, bool]] = []
        for frame in frames:
            if self._encoder is None:
                self._encoder = self._open_encoder(frame.width, frame.height)
            enc = self._encoder
            if (frame.width, frame.height) != (enc.width, enc.height) or (
                frame.format.name != "yuv420p"
            ):
                frame = frame.reformat(width=enc.width, height=enc.height, format="yuv420p")
            frame.pts = pts
            frame.time_base = TS_TIME_BASE
            if force_idr or self._last_idr is None or pts - self._last_idr >= GOP_TICKS:
                frame.pict_type = PictureType.I
            else:
                frame.pict_type = PictureType.NONE
            for packet in enc.encode(frame):
                out.append(self._emit(packet))
        return out

    def _emit(self, packet: av.Packet[Any]) -> tuple[bytes, int, bool]:
        key = bool(packet.is_keyframe)
        pts = int(packet.pts) if packet.pts is not None else 0
        if key:
            self._last_idr = pts
        return bytes(packet), pts, key

    def flush(self) -> list[tuple[bytes, int, bool]]:
        if self._encoder is None:
            return []
        return [self._emit(p) for p in self._encoder.encode(None)]
