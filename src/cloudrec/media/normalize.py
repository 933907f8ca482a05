"""One ingested publication's frames → what every reader takes: H.264 + (Opus or AAC).

Readers of a room (source and mixed recordings, snapshots, WHEP viewers) take H.264 video and
Opus or AAC audio. A publisher that does not come over WebRTC (RTMP, SRT, RTSP, HLS pulls) may
send anything its container carries, so an ingress puts a :class:`PublicationNormalizer` between
its demuxer and the room:

- **video:** H.264 passes untouched (never decoded). H.265, MPEG-4 Part 2, VP8, VP9, AV1 and
  FLV's Sorenson H.263 / VP6 / Screen Video are decoded and encoded to H.264 by one
  :class:`~cloudrec.media.transcode.VideoTranscoder` per publication, with an IDR where the
  source has a key frame (readers cut segments on them and ask for no others).
- **audio:** Opus and AAC pass untouched (AAC as one ADTS frame per EncodedFrame). MP3, MP2,
  G.711 (``pcma``/``pcmu``, 8 kHz mono as cameras send it), PCM and whatever else PyAV decodes
  become AAC-LC 48 kHz through one :class:`~cloudrec.media.audio.AudioToAac` per publication;
  mono stays mono.
- a codec PyAV cannot decode raises :class:`~cloudrec.media.codecs.UnsupportedCodec` (``codec X
  not supported``) on its first frame; a publication whose codec changes midway raises
  :class:`ValueError`. The ingress reports either and drops the publisher.

Input frames carry the codec's own framing (Annex B for H.264/H.265, elementary frames for
MPEG-4 and VPx, raw MP3 frames, G.711 bytes) and timestamps from one origin per publication.
Output video keeps the input's presentation times in 90 kHz; output AAC is timed by its sample
count at 48 kHz, anchored on the first input timestamp, with short losses filled with silence
and a longer gap (over 1 s) re-anchored on the input's time (the encoder's priming packet is
dropped when it would fall before 0). Timestamps are integers, never negative, and rise.
"""

from __future__ import annotations

from collections import deque

import av

from cloudrec.media.audio import AAC_FRAME, SAMPLE_RATE, AudioToAac, audio_decoder
from cloudrec.media.transcode import VideoTranscoder
from cloudrec.mediatypes import EncodedFrame

PASS_VIDEO = ("h264",)
PASS_AUDIO = ("opus", "aac")
MONO_CODECS = ("pcma", "pcmu")  # G.711 is 8 kHz mono unless told otherwise
VIDEO_CLOCK = 90_000
GAP_S = 1.0  # audio input time jumping further than this is re-anchored, not filled


class _AudioOut:
    """Audio that is encoded here: the chain and the timeline of its output (48 kHz)."""

    def __init__(self, chain: AudioToAac) -> None:
        self.chain = chain
        self.next_in: int | None = None  # where the next input frame should start (48 kHz)
        self.anchors: deque[tuple[int, int]] = deque()  # (sample on chain.fed, timestamp)
        self.last_ts = -AAC_FRAME  # timestamp of the last packet given out

    def push(self, frame: EncodedFrame) -> list[tuple[bytes, int]]:
        chain = self.chain
        at = frame.timestamp * SAMPLE_RATE // (frame.clock_rate or SAMPLE_RATE)
        if self.next_in is None:
            self._anchor(at)
        else:
            missing = at - self.next_in
            if missing <= -AAC_FRAME // 2:  # a repeat, or too late for its place
                return []
            if missing > GAP_S * SAMPLE_RATE:
                self._anchor(at)
            elif missing > SAMPLE_RATE // 400:  # lost input (> 2.5 ms): keep time with silence
                chain.silence(missing)
        samples = chain.decode(frame.data)
        self.next_in = (at + samples) if samples else max(at, self.next_in or at)
        return self._timed(chain.packets())

    def flush(self) -> list[tuple[bytes, int]]:
        return self._timed(self.chain.flush())

    def _anchor(self, at: int) -> None:
        sample = self.chain.align()
        if self.anchors:  # never before what the previous anchor times
            last_sample, last_ts = self.anchors[-1]
            at = max(at, last_ts + sample - last_sample)
        self.anchors.append((sample, at))

    def _timed(self, packets: list[tuple[bytes, int]]) -> list[tuple[bytes, int]]:
        out = []
        for data, sample in packets:
            while len(self.anchors) > 1 and self.anchors[1][0] <= sample:
                self.anchors.popleft()
            anchor_sample, anchor_ts = self.anchors[0]
            ts = max(anchor_ts + sample - anchor_sample, self.last_ts + AAC_FRAME)
            if ts < 0:  # the encoder's priming packet, before a stream that starts at 0
                continue
            self.last_ts = ts
            out.append((data, ts))
        return out


class PublicationNormalizer:
    """One publication's frames in, H.264 and Opus/AAC frames out (see the module docstring).

    ``sample_rate`` and ``channels`` describe audio whose packets do not say them (G.711, PCM;
    0: the frame's clock rate, and mono for G.711, stereo otherwise). Not thread-safe.
    """

    def __init__(self, *, sample_rate: int = 0, channels: int = 0,
                 video_bit_rate: int = 1_000_000, fps_hint: int = 30) -> None:
        self._sample_rate = sample_rate
        self._channels = channels
        self._bit_rate = video_bit_rate
        self._fps_hint = fps_hint
        self.codecs: dict[str, str] = {}  # the input codec per kind
        self._video: VideoTranscoder | None = None
        self._audio: _AudioOut | None = None
        self._last: dict[str, EncodedFrame] = {}  # the latest input frame per kind
        self.encoders: list[str] = []  # encoders opened, e.g. ["libx264", "aac"]

    def push(self, frame: EncodedFrame) -> list[EncodedFrame]:
        """The frames that ``frame`` gives (none while an encoder fills its pipeline)."""
        codec = self.codecs.setdefault(frame.kind, frame.codec)
        if codec != frame.codec:
            raise ValueError(f"{frame.kind} codec changed from {codec} to {frame.codec}")
        self._last[frame.kind] = frame
        if frame.kind == "video":
            if codec in PASS_VIDEO:
                return [frame]
            return self._push_video(frame)
        if codec in PASS_AUDIO:
            return [frame]
        return self._push_audio(frame)

    def flush(self) -> list[EncodedFrame]:
        """What the encoders still hold, at the end of the publication."""
        out: list[EncodedFrame] = []
        if self._video is not None:
            out += self._video_frames(self._video.flush(), self._last["video"])
        if self._audio is not None:
            out += self._audio_frames(self._audio.flush(), self._last["audio"])
        return out

    # -- video -------------------------------------------------------------------------------

    def _push_video(self, frame: EncodedFrame) -> list[EncodedFrame]:
        if self._video is None:
            self._video = VideoTranscoder(frame.codec, bit_rate=self._bit_rate,
                                          fps_hint=self._fps_hint, gop_ticks=None)
        pts = frame.timestamp * VIDEO_CLOCK // (frame.clock_rate or VIDEO_CLOCK)
        units = self._video.transcode(frame.data, pts)
        if self._video.opened:
            self._note(self._video.encoder_name)
        return self._video_frames(units, frame)

    def _video_frames(self, units: list[tuple[bytes, int, bool]],
                      source: EncodedFrame) -> list[EncodedFrame]:
        return [EncodedFrame("video", "h264", data, pts, VIDEO_CLOCK, source.arrival, key,
                             source.epoch) for data, pts, key in units]

    # -- audio -------------------------------------------------------------------------------

    def _push_audio(self, frame: EncodedFrame) -> list[EncodedFrame]:
        if self._audio is None:
            rate = self._sample_rate or frame.clock_rate or SAMPLE_RATE
            channels = self._channels or self._probe_channels(frame, rate)
            chain = AudioToAac(frame.codec, 1 if channels == 1 else 2, sample_rate=rate,
                               in_channels=channels, dual_mono=False)  # keeps its layout
            self._audio = _AudioOut(chain)
            self._note(chain.encoder_name)
        return self._audio_frames(self._audio.push(frame), frame)

    def _probe_channels(self, frame: EncodedFrame, rate: int) -> int:
        """The channel count of a codec whose packets say it (MP3, ...), from its first one."""
        if frame.codec in MONO_CODECS:
            return 1
        decoder = audio_decoder(frame.codec, rate, 2)
        try:
            for decoded in decoder.decode(av.Packet(frame.data)):
                return 1 if decoded.layout.nb_channels == 1 else 2
        except av.FFmpegError:
            pass
        return 2

    def _audio_frames(self, packets: list[tuple[bytes, int]],
                      source: EncodedFrame) -> list[EncodedFrame]:
        return [EncodedFrame("audio", "aac", data, ts, SAMPLE_RATE, source.arrival, True,
                             source.epoch) for data, ts in packets]

    def _note(self, name: str | None) -> None:
        if name is not None and name not in self.encoders:
            self.encoders.append(name)
