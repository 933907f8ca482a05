"""Video that is not H.264 (VP8, VP9, H.265, MPEG-4 Part 2, ...) → H.264 with libx264.

Used only when remuxing is impossible: decode, then libx264 ``veryfast``/``zerolatency`` at
about 1 Mbps. Key frames are placed by time (an IDR every ``gop_ticks`` of PTS, 2 s by
default) and on demand (``force_idr``), so segments can be cut where the recorder wants without
asking the publisher; with ``gop_ticks=None`` they follow the source instead (an IDR where the
decoded picture is a key frame), as a publication that readers cut for themselves wants.

Input timestamps go on the packets, so a source with B-frames (H.265, MPEG-4) comes out in
presentation order with its own PTS. A codec PyAV cannot decode raises
:class:`~cloudrec.media.codecs.UnsupportedCodec`.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import av
from av.video.frame import PictureType

from cloudrec.media.codecs import UnsupportedCodec

TS_TIME_BASE = Fraction(1, 90_000)
GOP_TICKS = 2 * 90_000  # an IDR at least every 2 s of media
# codec names (as publishers and ingest give them) → PyAV decoders; FLV's "h263" is Sorenson's
DECODERS = {"vp8": "vp8", "vp9": "vp9", "av1": "libdav1d", "h265": "hevc", "hevc": "hevc",
            "mpeg4": "mpeg4", "h263": "flv", "vp6": "vp6f", "vp6a": "vp6a", "screen": "flashsv",
            "screen2": "flashsv2", "mpeg2": "mpeg2video"}


class VideoTranscoder:
    """Decode one publisher's video and encode it to H.264 Annex B access units."""

    encoder_name = "libx264"

    def __init__(self, codec: str, *, bit_rate: int = 1_000_000, fps_hint: int = 30,
                 gop_ticks: int | None = GOP_TICKS) -> None:
        self._codec = codec
        self._bit_rate = bit_rate
        self._fps_hint = fps_hint
        self._gop_ticks = gop_ticks
        self._decoder = self._new_decoder()
        self._encoder: av.VideoCodecContext | None = None
        self._last_idr: int | None = None
        self._last_pts: int | None = None
        self.opened = False  # whether the encoder was opened

    def _new_decoder(self) -> av.VideoCodecContext:
        try:
            decoder = av.CodecContext.create(DECODERS.get(self._codec, self._codec), "r")
        except (av.FFmpegError, ValueError):
            raise UnsupportedCodec(self._codec) from None
        if not isinstance(decoder, av.VideoCodecContext):
            raise UnsupportedCodec(self._codec)
        return decoder

    def reset(self) -> None:
        """A new publication: fresh decoder state (the encoder keeps going)."""
        self._decoder = self._new_decoder()
        self._last_pts = None

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
        packet = av.Packet(data)
        packet.pts, packet.time_base = pts, TS_TIME_BASE
        try:
            frames = self._decoder.decode(packet)
        except av.FFmpegError:
            return []
        return self._encode(frames, pts, force_idr)

    def _encode(self, frames: list[av.VideoFrame], pts: int, force_idr: bool) -> list[
        tuple[bytes, int, bool]
    ]:
        out: list[tuple[bytes, int, bool]] = []
        for frame in frames:
            at = frame.pts if frame.pts is not None else pts
            if self._last_pts is not None and at <= self._last_pts:
                continue  # a picture the decoder gives out of order (a broken stream): dropped
            self._last_pts = at
            key = self._last_idr is None or (
                frame.key_frame if self._gop_ticks is None
                else at - self._last_idr >= self._gop_ticks)
            if self._encoder is None:
                self._encoder = self._open_encoder(frame.width, frame.height)
            enc = self._encoder
            if (frame.width, frame.height) != (enc.width, enc.height) or (
                frame.format.name != "yuv420p"
            ):
                frame = frame.reformat(width=enc.width, height=enc.height, format="yuv420p")
            frame.pts = at
            frame.time_base = TS_TIME_BASE
            if force_idr or key:
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
        """The pictures the decoder still holds (a source with B-frames), then the encoder's."""
        try:
            frames = self._decoder.decode(None)
        except av.FFmpegError:
            frames = []
        out = self._encode(frames, (self._last_pts or 0) + 1, False)
        if self._encoder is None:
            return out
        return out + [self._emit(p) for p in self._encoder.encode(None)]
