"""Demuxing a container with PyAV into EncodedFrames: MPEG-TS from SRT, and any stream PyAV
opens (pulls reuse it).

:class:`ByteFeed` is the file-like object between an event loop that receives bytes and the
thread that demuxes them: bounded (the loop waits while it holds :data:`FEED_LIMIT` bytes), and
``read`` returns ``b""`` once the loop closed it; ``on_wait`` lets the reader hand on what it
holds before a read waits. :func:`demux_frames` runs in that thread and
calls ``deliver`` per frame:

- H.264 leaves as Annex B access units with SPS/PPS in front of every keyframe, 90 kHz; an
  access unit of NAL units H.264 has no use for (type 0: H.265's VPS and TRAIL_N as H.264
  reads them) and no slice raises ValueError, as a source that switched to H.265 on the same
  PID sends (FFmpeg's demuxer keeps calling it H.264);
- AAC as one ADTS frame (the header added from the AudioSpecificConfig where the container
  has none), in its sample rate; MP3/MP2 frames where AAC was (a source that switched codec on
  the same PID) raise ValueError;
- other video with the headers its container carries once in front of every keyframe (a
  decoder has no other way to them): H.265's VPS/SPS/PPS (length-prefixed packets of MP4, FLV,
  RTMP re-framed as Annex B from their hvcC record; from RTSP's SDP), MPEG-4's VOL;
- other codecs under their name (FFmpeg's, ``hevc`` as ``h265``, G.711 as ``pcma``/``pcmu``)
  with the packet as the container carried it, video in 90 kHz, audio in its sample rate.

Timestamps count from the stream's first media, one origin for every kind (so they stay in
sync), never below 0; video timestamps are presentation times.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

from ..media.codecs.aac import parse_adts, parse_asc
from ..media.codecs.h264 import (
    access_unit,
    join_annexb,
    parse_avc_config,
    read_sized_nals,
    split_annexb,
    split_avcc,
)
from ..mediatypes import EncodedFrame
from .base import Timeline

__all__ = ["ByteFeed", "CODEC_NAMES", "demux_frames", "packet_frame"]

FEED_LIMIT = 4 << 20  # bytes a feed holds before the writer waits
CODEC_NAMES = {"hevc": "h265", "mpeg4": "mpeg4", "pcm_alaw": "pcma", "pcm_mulaw": "pcmu"}
PROBE = {"probesize": "1000000", "analyzeduration": "1000000", "fpsprobesize": "0"}


class ByteFeed:
    """Bytes from the loop (:meth:`put`) to a reading thread (:meth:`read`), bounded."""

    def __init__(self, limit: int = FEED_LIMIT, on_wait: Callable[[], None] | None = None) -> None:
        self.limit = limit
        self.on_wait = on_wait  # called (in the reading thread) before a read waits for data
        self._buf = bytearray()
        self._cond = threading.Condition()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    async def put(self, data: bytes) -> None:
        """Appends ``data``, first waiting while the feed is full (the reader is behind)."""
        while len(self._buf) >= self.limit and not self._closed:
            await asyncio.sleep(0.01)
        with self._cond:
            if not self._closed:
                self._buf += data
                self._cond.notify()

    def close(self) -> None:
        """No more data: the reader gets what is left, then ``b""``."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def read(self, size: int = -1) -> bytes:
        if not self._buf and not self._closed and self.on_wait is not None:
            self.on_wait()
        with self._cond:
            while not self._buf and not self._closed:
                self._cond.wait(0.5)
            n = len(self._buf) if size < 0 else min(size, len(self._buf))
            out = bytes(self._buf[:n])
            del self._buf[:n]
            return out


def demux_frames(source: Any, epoch: int, deliver: Callable[[EncodedFrame], bool], *,
                 fmt: str | None = "mpegts", options: dict[str, str] | None = None) -> None:
    """Demuxes ``source`` (a file-like object or a URL) until it ends or ``deliver`` returns
    False. PyAV's errors (garbage, a truncated stream) propagate."""
    import av  # PyAV: only where media is demuxed

    with av.open(source, mode="r", format=fmt, options=options or PROBE) as container:
        timeline, params = Timeline(90000), dict[int, tuple[bytes, int]]()
        if container.start_time is not None:  # the earliest stream's start, in microseconds
            timeline.origin = container.start_time * 9 // 100
        for packet in container.demux():
            frame = packet_frame(packet, timeline, params, epoch)
            if frame is not None and not deliver(frame):
                return


def packet_frame(packet: Any, timeline: Timeline, params: dict[int, tuple[bytes, int]],
                 epoch: int, *, names: dict[str, str] = CODEC_NAMES,
                 audio_rate: int = 90000) -> EncodedFrame | None:
    """The :class:`EncodedFrame` of one PyAV packet, or None for an empty packet, one without a
    time, or one of a stream that is neither video nor audio.

    H.264 becomes one Annex B access unit with SPS/PPS in front of every keyframe (AVCC packets
    re-framed); AAC one ADTS frame. ``params`` keeps each stream's SPS/PPS and AVCC length size
    between calls, read from the extradata until it holds them; ``names`` maps FFmpeg's codec
    names to ours; ``audio_rate`` is the clock of audio whose codec context has no sample
    rate."""
    stream = packet.stream
    if packet.size == 0 or stream.type not in ("video", "audio"):
        return None
    t = packet.pts if packet.pts is not None else packet.dts
    tb = stream.time_base
    if t is None or tb is None:
        return None
    t = t * 90000 * tb.numerator // tb.denominator
    ctx = stream.codec_context
    name = names.get(ctx.name, ctx.name)
    data, keyframe = bytes(packet), bool(packet.is_keyframe)
    if stream.type == "video":
        rate = 90000
        if name == "h264":
            if not params.get(stream.index, (b"",))[0]:  # until the extradata has them
                params[stream.index] = _annexb_params(ctx.extradata)
            annexb, length = params[stream.index]
            nals = split_avcc(data, length) if length else split_annexb(data)
            types = {nal[0] & 0x1F for nal in nals}
            if 0 in types and not types & {1, 5}:  # H.265's VPS or TRAIL_N, never H.264's
                raise ValueError("the video is not H.264 any more: the source changed its "
                                 "codec midway")
            data, keyframe = access_unit(nals, keyframe, annexb)
        elif ctx.extradata:  # headers the container carries once, which a decoder needs
            if stream.index not in params:
                params[stream.index] = _stream_headers(name, ctx.extradata)
            headers, length = params[stream.index]
            if length:
                data = join_annexb(split_avcc(data, length))
            if keyframe and headers:
                data = headers + data
    else:
        keyframe = True
        rate = getattr(ctx, "sample_rate", 0) or audio_rate
        if name == "aac":
            data, rate = _adts(data, ctx.extradata, rate)
    return EncodedFrame(stream.type, name, data, timeline.at(t, rate), rate, time.monotonic(),
                        keyframe, epoch)


def _annexb_params(extradata: bytes | None) -> tuple[bytes, int]:
    """Annex B SPS/PPS from a stream's extradata (Annex B already, or an avcC record), and the
    AVCC length size of its packets (0: the packets are Annex B)."""
    if not extradata:
        return b"", 0
    if extradata[0] == 1:
        config = parse_avc_config(extradata)
        return config.annexb, config.length_size
    return extradata, 0


def _stream_headers(name: str, extradata: bytes) -> tuple[bytes, int]:
    """The headers of a video stream other than H.264, in its bitstream's own form, to put in
    front of key frames (H.265's VPS/SPS/PPS, MPEG-4's VOL), and the NAL length size of
    length-prefixed H.265 packets (0: Annex B already, or not H.265); none for extradata that is
    not part of the bitstream (VPx, AV1)."""
    if name == "h265" and extradata[0] == 1:
        return _hvcc_params(extradata)
    if extradata.startswith((b"\x00\x00\x01", b"\x00\x00\x00\x01")):
        return bytes(extradata), 0
    return b"", 0


def _hvcc_params(record: bytes) -> tuple[bytes, int]:
    """The Annex B VPS/SPS/PPS of an HEVCDecoderConfigurationRecord, and its NAL length size;
    ValueError when malformed."""
    if len(record) < 23:
        raise ValueError("HEVCDecoderConfigurationRecord truncated")
    length_size, pos, nals = (record[21] & 3) + 1, 23, []
    for _ in range(record[22]):  # arrays: type byte, 16-bit count, then sized NAL units
        count = int.from_bytes(record[pos + 1:pos + 3], "big")
        found, pos = read_sized_nals(record, pos + 3, count, "HEVCDecoderConfigurationRecord")
        nals += found
    return join_annexb(nals), length_size


def _adts(data: bytes, extradata: bytes | None, rate: int) -> tuple[bytes, int]:
    """An AAC frame with its ADTS header (added from the AudioSpecificConfig when missing)."""
    config = parse_adts(data)
    if config is not None:
        return data, config.sample_rate
    if data[:1] == b"\xff" and len(data) > 1 and data[1] & 0xE0 == 0xE0 and data[1] & 0x06:
        # an MPEG audio header of layer I-III: MP3/MP2 where AAC was (FFmpeg's MPEG-TS
        # demuxer keeps calling a PID's stream AAC when the source switches its codec)
        raise ValueError("the audio is not AAC any more: the source changed its codec midway")
    if not extradata:
        raise ValueError("AAC without ADTS headers or an AudioSpecificConfig")
    config = parse_asc(extradata)
    return config.adts(data), config.sample_rate
