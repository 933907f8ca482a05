"""fMP4 (CMAF) segments of an HLS recording that keeps Opus as Opus: H.264 and Opus untouched.

Each segment is muxed by PyAV's ``mp4`` muxer in fragmented mode, into its own ``.part`` file:
``movflags=frag_custom+empty_moov+delay_moov+default_base_moof+frag_discont+skip_trailer``
gives ``ftyp`` + ``moov`` (written once the first packets have given the H.264 parameters) and
one ``moof`` + ``mdat`` fragment per segment, whose ``tfdt`` is the packets' own decode time
(``frag_discont`` with the default edit list handling: no rebasing to zero), so segments of
separate muxers follow each other on one timeline. On close the file is split: ``ftyp`` +
``moov`` are the initialisation section (the playlist's ``#EXT-X-MAP``), the fragments are the
``.m4s`` segment. Each segment whose first packet's wall-clock time is known (the room timeline
of its ``#EXT-X-PROGRAM-DATE-TIME``) carries it in a ``prft`` box before its ``moof``.

Opus in MP4 needs its ``dOps`` box, which FFmpeg writes from the stream's ``OpusHead``
extradata: the Opus stream is made from a template stream read from a tiny Ogg Opus file
(mapping family 0, 2 channels, 48 kHz), made once per process. A stereo ``OpusHead`` decodes
mono and stereo packets alike, which is what WebRTC's ``opus/48000/2`` means.

H.264 arrives in Annex B with SPS/PPS in band (the muxer turns it into length-prefixed samples
and builds ``avcC`` from the first key frame); the picture size comes from that SPS. A segment
with no video packet (an audio-led stretch, the camera off) keeps the video track of the
previous initialisation section (``template``), so players see the same tracks throughout; only
a recording that starts with no video has an audio-only section first, and the playlist names
each new section before the segment that needs it.
"""

from __future__ import annotations

import io
import os
import struct
import threading
from fractions import Fraction
from pathlib import Path

import av

from cloudrec.errors import RecordingError
from cloudrec.media.codecs import h264
from cloudrec.media.hls import TS_CLOCK, fsync_dir

TIME_BASE = Fraction(1, TS_CLOCK)
MOVFLAGS = "frag_custom+empty_moov+delay_moov+default_base_moof+frag_discont+skip_trailer"
INIT_BOXES = (b"ftyp", b"moov")
SEGMENT_BOXES = (b"styp", b"sidx", b"prft", b"moof", b"mdat")

_template_lock = threading.Lock()
_template: tuple[av.container.InputContainer, av.stream.Stream] | None = None


def opus_template() -> av.stream.Stream:
    """An Opus stream (2 channels, 48 kHz) whose parameters carry an ``OpusHead``."""
    global _template
    with _template_lock:
        if _template is None:
            buf = io.BytesIO()
            with av.open(buf, "w", format="ogg") as out:
                stream = out.add_stream("libopus", rate=48_000, layout="stereo")
                frame = av.AudioFrame(format="s16", layout="stereo", samples=960)
                frame.sample_rate, frame.pts = 48_000, 0
                for plane in frame.planes:
                    plane.update(bytes(plane.buffer_size))
                for packet in [*stream.encode(frame), *stream.encode(None)]:
                    out.mux(packet)
            buf.seek(0)
            source = av.open(buf, "r", format="ogg")
            _template = (source, source.streams.audio[0])
        return _template[1]


def split_boxes(data: bytes) -> tuple[bytes, bytes]:
    """(initialisation section, media segment) of a fragmented MP4 file's top-level boxes."""
    init, media = bytearray(), bytearray()
    for kind, start, _, end in _boxes(data):
        if kind in INIT_BOXES:
            init += data[start:end]
        elif kind in SEGMENT_BOXES:
            media += data[start:end]
    return bytes(init), bytes(media)


def _boxes(data: bytes, pos: int = 0,
           end: int | None = None) -> list[tuple[bytes, int, int, int]]:
    """``(type, start, start of its payload, end)`` of each box in ``data[pos:end]`` (a box
    running past ``end`` is cut there)."""
    end = len(data) if end is None else end
    found = []
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        head = 8
        if size == 1:
            size, head = struct.unpack_from(">Q", data, pos + 8)[0], 16
        elif size == 0:
            size = end - pos
        if size < head:
            raise ValueError(f"bad MP4 box at {pos}")
        found.append((kind, pos, pos + head, min(pos + size, end)))
        pos += size
    return found


NTP_UNIX = 2_208_988_800  # seconds from the NTP epoch (1900) to the Unix epoch (1970)


def _child(data: bytes, start: int, end: int, kind: bytes) -> tuple[int, int] | None:
    return next(((s, e) for k, _, s, e in _boxes(data, start, end) if k == kind), None)


def _timescales(init: bytes) -> dict[int, int]:
    """Track ID → timescale, from an initialisation section's ``moov``."""
    scales = {}
    moov = _child(init, 0, len(init), b"moov")
    for kind, _, start, end in _boxes(init, *moov) if moov else []:
        if kind != b"trak":
            continue
        tkhd, mdia = _child(init, start, end, b"tkhd"), _child(init, start, end, b"mdia")
        mdhd = _child(init, *mdia, b"mdhd") if mdia else None
        if tkhd is None or mdhd is None:
            continue
        v_tkhd, v_mdhd = init[tkhd[0]], init[mdhd[0]]
        track = struct.unpack_from(">I", init, tkhd[0] + (20 if v_tkhd == 1 else 12))[0]
        scales[track] = struct.unpack_from(">I", init, mdhd[0] + (20 if v_mdhd == 1 else 12))[0]
    return scales


def with_prft(init: bytes, media: bytes, first: float) -> bytes:
    """``media`` (a segment's fragments) with a ``prft`` box (ISO/IEC 14496-12 8.16.5, version 1,
    flags 0, as FFmpeg's ``write_prft`` writes it) before its first ``moof``: the wall-clock
    time, in NTP format, of the decode time (``tfdt``) of the track that starts first, where
    ``first`` is the wall-clock time (s since the Unix epoch) of the segment's first packet.
    ``media`` unchanged when it has no fragment to refer to."""
    scales = _timescales(init)
    moof = next(((b, s, e) for k, b, s, e in _boxes(media) if k == b"moof"), None)
    if moof is None:
        return media
    cut, *payload = moof
    starts = []  # (seconds, track, decode time)
    for kind, _, start, end in _boxes(media, *payload):
        tfhd, tfdt = _child(media, start, end, b"tfhd"), _child(media, start, end, b"tfdt")
        if kind != b"traf" or tfhd is None or tfdt is None:
            continue
        track = struct.unpack_from(">I", media, tfhd[0] + 4)[0]
        fmt = ">Q" if media[tfdt[0]] == 1 else ">I"
        decode = struct.unpack_from(fmt, media, tfdt[0] + 4)[0]
        if scales.get(track):
            starts.append((decode / scales[track], track, decode))
    if not starts:
        return media
    _, track, decode = min(starts)  # its first packet is the segment's: at ``first``
    ntp = round((first + NTP_UNIX) * (1 << 32))
    box = struct.pack(">I4sB3xIQQ", 32, b"prft", 1, track, ntp, decode)
    return media[:cut] + box + media[cut:]


class Fmp4SegmentWriter:
    """One fMP4 segment (``.m4s``), with the same interface as the MPEG-TS segment writer.

    The muxer opens on the first packet (the video track needs the picture size of the first
    key frame's SPS). :meth:`close` keeps the initialisation section in :attr:`init`."""

    def __init__(self, path: Path, *, video: bool, audio: bool,
                 template: bytes | None = None, date: float | None = None) -> None:
        self.path = path
        self.date = date  # the wall-clock time of its first packet: its ``prft`` box
        self._template = template  # an earlier initialisation section: its video track
        self._template_in: av.container.InputContainer | None = None
        self._avcc_length: int | None = None  # a video track from the template takes AVCC
        self._tmp = path.with_name(path.name + ".part")
        self._want_video, self._want_audio = video, audio
        self._container: av.container.OutputContainer | None = None
        self._streams: dict[str, av.stream.Stream] = {}
        self._closed = False
        self.packets = 0
        self.init: bytes = b""

    def _open(self, kind: str, data: bytes) -> None:
        size = h264.picture_size(data) if kind == "video" else None
        try:
            container = av.open(str(self._tmp), "w", format="mp4",
                                options={"movflags": MOVFLAGS})
            if self._want_video and size is not None:
                self._streams["video"] = container.add_mux_stream(
                    "h264", width=size[0], height=size[1])
            elif self._want_video and self._template:
                self._template_in = av.open(io.BytesIO(self._template), "r", format="mp4")
                if self._template_in.streams.video:
                    template = self._template_in.streams.video[0]
                    self._streams["video"] = container.add_stream_from_template(template)
                    try:
                        config = h264.parse_avc_config(template.codec_context.extradata or b"")
                        self._avcc_length = config.length_size
                    except ValueError:
                        self._avcc_length = 4  # what FFmpeg's avcC says
            if self._want_audio:
                self._streams["audio"] = container.add_stream_from_template(opus_template())
        except (av.FFmpegError, OSError) as exc:
            raise RecordingError(f"cannot open segment {self.path.name}: {exc}") from exc
        self._container = container

    def write(self, kind: str, data: bytes, pts: int, *, keyframe: bool = False,
              duration: int | None = None) -> None:
        """Mux one H.264 access unit or one Opus packet at ``pts`` (90 kHz ticks); ``duration``
        (ticks): the last sample's, where the next one does not follow it."""
        if self._container is None:
            self._open(kind, data)
        stream = self._streams.get(kind)
        if stream is None:
            if kind == "video" and self._want_video:
                return  # video after an audio-led start: this segment is audio only
            raise ValueError(f"segment {self.path.name} has no {kind} stream")
        assert self._container is not None
        if kind == "video" and self._avcc_length is not None:  # the muxer takes it as it is
            data = h264.join_avcc(h264.split_annexb(data), self._avcc_length)
        packet = av.Packet(data)
        packet.stream = stream
        packet.time_base = TIME_BASE
        packet.pts = packet.dts = pts
        if duration is not None:
            packet.duration = duration
        packet.is_keyframe = keyframe or kind == "audio"
        try:
            self._container.mux(packet)
        except (av.FFmpegError, OSError) as exc:
            raise RecordingError(f"writing segment {self.path.name} failed: {exc}") from exc
        self.packets += 1

    def close(self) -> int:
        """Finish the file, keep its initialisation section, make the fragments durable under
        the segment's final name; returns the segment's size in bytes."""
        self._closed = True
        try:
            if self._container is not None:
                self._container.close()
                self._close_template()
                init, media = split_boxes(self._tmp.read_bytes())
                if self.date is not None:
                    media = with_prft(init, media, self.date)
            else:
                init, media = b"", b""
            self.init = init
            with open(self._tmp, "wb") as f:
                f.write(media)
                f.flush()
                os.fsync(f.fileno())
            os.replace(self._tmp, self.path)
            fsync_dir(self.path.parent)
            return len(media)
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise RecordingError(f"closing segment {self.path.name} failed: {exc}") from exc

    def _close_template(self) -> None:
        if self._template_in is not None:
            self._template_in.close()
            self._template_in = None

    def abort(self) -> None:
        """Drop the unfinished file."""
        if self._closed:
            return
        self._closed = True
        self._close_template()
        if self._container is not None:
            try:
                self._container.close()
            except (av.FFmpegError, OSError):
                pass
        self._tmp.unlink(missing_ok=True)
