"""FLV tag bodies, as RTMP audio and video messages carry them, into EncodedFrames.

H.264 (FLV codec 7, or Enhanced RTMP ``avc1``) becomes Annex B with SPS/PPS in front of
keyframes; AAC (sound format 10) gets ADTS headers from its AudioSpecificConfig. Every other
codec is reported by name with the tag body as sent (after the FLV header byte), so the caller
can refuse or transcode it.
"""

from __future__ import annotations

import time

from ..media.codecs.aac import AacConfig, parse_asc
from ..media.codecs.h264 import AvcConfig, access_unit, parse_avc_config, split_avcc
from ..mediatypes import EncodedFrame
from .base import Timeline

VIDEO_CODECS = {2: "h263", 3: "screen", 4: "vp6", 5: "vp6a", 6: "screen2", 7: "h264",
                12: "h265"}
VIDEO_FOURCC = {b"avc1": "h264", b"hvc1": "h265", b"av01": "av1", b"vp09": "vp9",
                b"vp08": "vp8"}
AUDIO_CODECS = {0: "pcm", 1: "adpcm", 2: "mp3", 3: "pcm_le", 4: "nellymoser",
                5: "nellymoser", 6: "nellymoser", 7: "pcma", 8: "pcmu", 10: "aac", 11: "speex",
                14: "mp3", 15: "device"}
AUDIO_FOURCC = {b"Opus": "opus", b"mp4a": "aac", b".mp3": "mp3", b"fLaC": "flac",
                b"ac-3": "ac3", b"ec-3": "eac3"}
FLV_RATES = (5512, 11025, 22050, 44100)


def _si24(b: bytes) -> int:
    value = int.from_bytes(b, "big")
    return value - (1 << 24) if value & 0x800000 else value


class FlvDemuxer:
    """One publisher's FLV state: its codec configurations and its timeline (milliseconds).

    ``video`` and ``audio`` return the frame of one message, or None for a configuration
    message (or media before its configuration). ``codecs`` names what was seen per kind.
    """

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.timeline = Timeline(1000)
        self.codecs: dict[str, str] = {}
        self.avc: AvcConfig | None = None
        self.aac: AacConfig | None = None

    def video(self, body: bytes, t_ms: int) -> EncodedFrame | None:
        if not body:
            return None
        head = body[0]
        frame_type = (head >> 4) & 7
        if head & 0x80:  # Enhanced RTMP: packet type in the low nibble, then a FourCC
            packet_type, fourcc = head & 0x0F, body[1:5]
            codec = VIDEO_FOURCC.get(fourcc, fourcc.decode("latin-1").strip().lower())
            if codec != "h264":
                return self._other("video", codec, body[5:], t_ms, frame_type == 1)
            if packet_type == 0:
                self._avc_config(body[5:])
                return None
            if packet_type not in (1, 3):
                return None
            cts, payload = (_si24(body[5:8]), body[8:]) if packet_type == 1 else (0, body[5:])
            return self._avc_frame(payload, t_ms + cts, frame_type == 1)
        codec = VIDEO_CODECS.get(head & 0x0F, f"flv-video-{head & 0x0F}")
        if codec != "h264":
            return self._other("video", codec, body[1:], t_ms, frame_type == 1)
        if len(body) < 5:
            raise ValueError("AVC video tag truncated")
        if body[1] == 0:
            self._avc_config(body[5:])
            return None
        if body[1] != 1:
            return None  # end of sequence
        return self._avc_frame(body[5:], t_ms + _si24(body[2:5]), frame_type == 1)

    def _avc_config(self, record: bytes) -> None:
        self.avc = parse_avc_config(record)
        self.codecs["video"] = "h264"

    def _avc_frame(self, payload: bytes, pts_ms: int, keyframe: bool) -> EncodedFrame | None:
        if not payload:
            return None
        length_size = self.avc.length_size if self.avc else 4
        params = self.avc.annexb if self.avc else b""
        data, keyframe = access_unit(split_avcc(payload, length_size), keyframe, params)
        self.codecs["video"] = "h264"
        return EncodedFrame("video", "h264", data, self.timeline.at(pts_ms, 90000), 90000,
                            time.monotonic(), keyframe, self.epoch)

    def audio(self, body: bytes, t_ms: int) -> EncodedFrame | None:
        if not body:
            return None
        head = body[0]
        sound_format = head >> 4
        if sound_format == 9:  # Enhanced RTMP audio: packet type, then a FourCC
            fourcc = body[1:5]
            codec = AUDIO_FOURCC.get(fourcc, fourcc.decode("latin-1").strip().lower())
            return self._other("audio", codec, body[5:], t_ms, True)
        if sound_format != 10:
            codec = AUDIO_CODECS.get(sound_format, f"flv-audio-{sound_format}")
            rate = 8000 if codec in ("pcma", "pcmu") else FLV_RATES[(head >> 2) & 3]
            return self._other("audio", codec, body[1:], t_ms, True, rate)
        if len(body) < 2:
            raise ValueError("AAC audio tag truncated")
        if body[1] == 0:
            self.aac = parse_asc(body[2:])
            self.codecs["audio"] = "aac"
            return None
        if self.aac is None or len(body) == 2:
            return None
        rate = self.aac.sample_rate
        return EncodedFrame("audio", "aac", self.aac.adts(body[2:]), self.timeline.at(t_ms, rate),
                            rate, time.monotonic(), True, self.epoch)

    def _other(self, kind: str, codec: str, data: bytes, t_ms: int, keyframe: bool,
               rate: int = 0) -> EncodedFrame:
        rate = rate or (90000 if kind == "video" else 1000)
        self.codecs[kind] = codec
        return EncodedFrame(kind, codec, data, self.timeline.at(t_ms, rate), rate,  # type: ignore[arg-type]
                            time.monotonic(), keyframe, self.epoch)


class FlvReader:
    """An FLV byte stream (as :class:`~cloudrec.ingest.rtmp.RtmpServer` re-emits it) into
    EncodedFrames: ``feed`` takes any slice of the stream and returns the frames it completes.

    Memory is bounded: a tag may be at most :data:`MAX_TAG` bytes; anything that is not FLV
    raises ``ValueError``.
    """

    MAX_TAG = 16 << 20

    def __init__(self, epoch: int) -> None:
        self.demux = FlvDemuxer(epoch)
        self._buf = bytearray()
        self._header = False

    @property
    def codecs(self) -> dict[str, str]:
        return self.demux.codecs

    def feed(self, data: bytes) -> list[EncodedFrame]:
        buf = self._buf
        if buf:  # the rest of a tag that a previous slice began
            buf += data
            if self._header and (len(buf) < 11 or len(buf) < int.from_bytes(buf[1:4], "big") + 15):
                if int.from_bytes(buf[1:4], "big") > self.MAX_TAG:
                    raise ValueError("FLV tag of more than 16 MiB")
                return []  # still unfinished: kept as it is, copied once finished
            data = bytes(buf)
            buf.clear()
        if not self._header:
            if len(data) < 13:
                self._buf += data
                return []
            if data[:3] != b"FLV":
                raise ValueError("not an FLV stream")
            skip = int.from_bytes(data[5:9], "big") + 4
            if not 9 <= skip - 4 <= 64:
                raise ValueError("bad FLV header")
            if len(data) < skip:
                self._buf += data
                return []
            data = data[skip:]
            self._header = True
        out: list[EncodedFrame] = []
        pos, size_of, video, audio = 0, len(data), self.demux.video, self.demux.audio
        while size_of - pos >= 11:
            size = int.from_bytes(data[pos + 1:pos + 4], "big")
            if size > self.MAX_TAG:
                raise ValueError(f"FLV tag of {size} bytes")
            end = pos + 11 + size + 4
            if size_of < end:
                break
            tag_type = data[pos] & 0x1F
            ts = int.from_bytes(data[pos + 4:pos + 7], "big") | (data[pos + 7] << 24)
            body = data[pos + 11:pos + 11 + size]
            frame = (video(body, ts) if tag_type == 9
                     else audio(body, ts) if tag_type == 8 else None)
            if frame is not None:
                out.append(frame)
            pos = end
        if pos < size_of:
            self._buf += data[pos:]
        return out
