"""The inputs of a mix: encoded frames per ``(roomid, uid)`` decoded for the compositor and mixer.

Video (H.264, VP8) is decoded by one PyAV decoder per input, created on the input's first
frame and again on a new epoch (a new publication), and fed from a key frame on; a decoder that
waits for one asks for it (at most every ``KEYFRAME_RETRY_S``). Only the latest picture of each
input is kept: the mix samples it at its own rate. An input whose video stopped ``STALE_S`` ago
counts as having none (the compositor patches it).

Audio, Opus (WebRTC publishers) or AAC (ingested ones: ADTS frames as the normaliser leaves
them, any sample rate), is decoded into the :class:`~cloudrec.media.mix.mixer.AudioMixer`,
which resamples to 48 kHz. Lost packets (a timestamp jump) become silence so the input keeps
its time; an input whose audio starts, or restarts after ``AUDIO_PAUSE_S`` or a new epoch, gets
``AUDIO_PRIME`` samples of silence first: the jitter buffer that keeps a real-time mix from
running dry between packets.

Lip sync (real time, once the mix clock has an ``origin``): every input frame is placed on the
wall clock through a mapping ``media time + offset``, where ``offset`` is the least ``arrival -
media time`` seen (the least delayed frame), allowed to rise by ``DRIFT`` per second so a
publisher's clock that runs slow is followed. When both tracks of an input carry the
publisher's capture time (``EncodedFrame.wallclock``, from its RTCP sender reports), that is
the media time and both tracks map through one offset, the larger of their two (the track
that arrives later sets when both play: audio sent 300 ms after its capture holds the picture
back 300 ms, rather than coming too late for its place); otherwise each track maps its own RTP
time through its own offset (arrival alone). Both tracks then play
``LATENCY_S`` after that wall time: a decoded picture waits in its input's queue until the mix
frame whose time has come (:meth:`MixInputs.show`), and decoded audio is written at its sample
position in the mixer (silence where it is early, the oldest samples dropped where it is late,
beyond ``SLIP`` samples either way). Without an origin (media-time rendering) pictures show at
once and audio follows its FIFO.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import av

from cloudrec.media.mix.mixer import SAMPLE_RATE, AudioMixer
from cloudrec.mediatypes import EncodedFrame

Key = tuple[str, str]  # (roomid, uid)

STALE_S = 2.0
AUDIO_PRIME = 3072  # samples (3 AAC frames, 64 ms)
AUDIO_PAUSE_S = 1.0
KEYFRAME_RETRY_S = 1.0
LATENCY_S = AUDIO_PRIME / SAMPLE_RATE  # both tracks play this long after their wall time
DRIFT = 0.001  # s per s: how fast a track's offset may rise
SLIP = SAMPLE_RATE // 100  # 10 ms: audio further from its place than this is moved
MAX_PENDING = 60  # decoded pictures waiting to show, per input
MAX_SPREAD = 1.0  # s: the most a track's late frames hold an input back (with sender clocks)
_DECODERS = {"h264": "h264", "vp8": "vp8", "vp9": "vp9", "av1": "libdav1d"}
AUDIO_CODECS = ("opus", "aac")  # WebRTC publishers send Opus; ingested ones AAC (normalised)


@dataclass
class MixedStats:
    """Counters of a mixed recorder; ``*_s`` are seconds of wall time spent in each stage."""

    frames_in: int = 0  # encoded input frames taken
    frames_ignored: int = 0  # frames of inputs (or kinds) the mix does not use
    video_decoded: int = 0
    decode_errors: int = 0
    keyframe_requests: int = 0
    frames_out: int = 0  # video frames encoded
    frames_skipped: int = 0  # output frames dropped to keep real time
    audio_frames_out: int = 0
    encoders: list[str] = field(default_factory=list)
    decode_s: float = 0.0
    compose_s: float = 0.0
    encode_s: float = 0.0
    audio_s: float = 0.0


class TrackClock:
    """One track's mapping from media time to the wall clock (see the module docstring)."""

    __slots__ = ("at", "offset", "spread")

    def __init__(self) -> None:
        self.offset: float | None = None
        self.at = 0.0
        self.spread = 0.0  # how much later than the least delayed its frames come (decaying)

    def wall(self, frame: EncodedFrame) -> float:
        """The wall-clock time (``time.monotonic()``) of ``frame``'s first sample."""
        return self.place(frame.timestamp / (frame.clock_rate or SAMPLE_RATE), frame.arrival)

    def place(self, media: float, arrival: float) -> float:
        """``media`` (seconds on the track's clock) of a frame that arrived at ``arrival`` on
        the wall clock."""
        seen = arrival - media
        if self.offset is None:
            self.offset = seen
        else:
            rise = DRIFT * max(0.0, arrival - self.at)
            self.offset = min(self.offset + rise, seen)
            self.spread = min(MAX_SPREAD, max(self.spread - rise, seen - self.offset))
        self.at = arrival
        return media + self.offset


class SenderSync:
    """One input's publisher clock: each track's ``wallclock`` mapped to the wall clock through
    the larger of the two tracks' offsets (the later track sets when both play), each with its
    spread (how much later than its least delayed frames the others come: an MPEG-TS muxer
    sends AAC in PES packets of ~0.25 s, whose first frames arrive that much later than its
    last; without it they came after their place and were dropped), used while the latest
    frame of each track carried one."""

    __slots__ = ("clocks", "epoch", "shared")

    def __init__(self) -> None:
        self.clocks: dict[str, TrackClock] = {}
        self.epoch: int | None = None
        self.shared: float | None = None  # the offset both tracks map through now, if they do

    def wall(self, frame: EncodedFrame, own: TrackClock) -> float:
        """The wall-clock time of ``frame``: on the publisher's clock when both tracks have it,
        else on ``own`` (its track's arrival mapping, which is kept up to date either way)."""
        if frame.epoch != self.epoch:
            self.clocks, self.epoch = {}, frame.epoch
        wall = own.wall(frame)
        sent = frame.wallclock
        if sent is None:
            self.clocks.pop(frame.kind, None)
            self.shared = None
            return wall
        self.clocks.setdefault(frame.kind, TrackClock()).place(sent, frame.arrival)
        if len(self.clocks) < 2:
            self.shared = None
            return wall
        self.shared = max(c.offset + c.spread for c in self.clocks.values()
                          if c.offset is not None)
        return sent + self.shared


class _Input:
    __slots__ = ("aclock", "adec", "aepoch", "asked_at", "frame", "key", "last_audio",
                 "last_video", "need_key", "next_rtp", "pending", "sync", "vclock", "vcodec",
                 "vdec", "vepoch")

    def __init__(self, key: Key) -> None:
        self.key = key
        self.vdec: av.VideoCodecContext | None = None
        self.vcodec = ""
        self.vepoch: int | None = None
        self.need_key = True
        self.asked_at = -1e9
        self.frame: av.VideoFrame | None = None
        self.last_video = 0.0
        self.adec: av.AudioCodecContext | None = None
        self.aepoch: int | None = None
        self.next_rtp = 0
        self.last_audio = -1e9
        self.vclock = TrackClock()
        self.aclock = TrackClock()
        self.sync = SenderSync()
        # (show at, the shared offset it was placed with or None, picture): a picture placed on
        # the publisher's clock moves with that offset until it shows (see MixInputs.show)
        self.pending: deque[tuple[float, float | None, av.VideoFrame]] = deque()


class MixInputs:
    """The decoders of the inputs a mix uses now (see :meth:`set_keys`)."""

    def __init__(
        self,
        mixer: AudioMixer | None,
        stats: MixedStats,
        request_keyframe: Callable[[Key], None] | None = None,
    ) -> None:
        self._mixer = mixer
        self._stats = stats
        self._request_keyframe = request_keyframe
        self._inputs: dict[Key, _Input] = {}
        self._video: frozenset[Key] = frozenset()
        self._audio: frozenset[Key] = frozenset()
        self.has_media = False  # some input frame was taken
        self.origin: float | None = None  # the wall time of the mix clock's zero (real time)

    @property
    def keys(self) -> frozenset[Key]:
        return self._video | self._audio

    def set_keys(self, video: Iterable[Key], audio: Iterable[Key]) -> None:
        """Decode the video of ``video`` and mix the audio of ``audio``; others are dropped."""
        self._video, self._audio = frozenset(video), frozenset(audio)
        if self._mixer is not None:
            self._mixer.set_inputs(list(self._audio))
        wanted = self.keys
        for key in set(self._inputs) - wanted:
            del self._inputs[key]
        for key in wanted:
            self._inputs.setdefault(key, _Input(key))

    def unpublished(self, key: Key) -> None:
        """``key`` stopped publishing: no picture from now on, fresh decoders when it returns."""
        inp = self._inputs.get(key)
        if inp is not None:
            inp.frame = None
            inp.pending.clear()
            inp.vdec = inp.adec = None
            inp.vepoch = inp.aepoch = None

    def resync(self, key: Key) -> None:
        """Frames of ``key`` were dropped on the way: decode its video again from a keyframe."""
        inp = self._inputs.get(key)
        if inp is not None:
            inp.need_key = True

    def restart(self) -> None:
        """After a pause: the pictures and sound still waiting for their time belong before
        it. Every input drops them (shown at the resume, a picture from before the pause came
        out beside the sound after it) and decodes its video again from its next key frame."""
        for inp in self._inputs.values():
            inp.pending.clear()
            inp.need_key = True
            if self._mixer is not None:
                self._mixer.drop(inp.key, self._mixer.buffered(inp.key))

    def show(self, at: float) -> None:
        """The mix frame at wall time ``at`` is due: every picture whose time has come is the
        current one of its input."""
        for inp in self._inputs.values():
            pending, shared = inp.pending, inp.sync.shared
            while pending:
                show_at, placed, picture = pending[0]
                if placed is not None and shared is not None:
                    # the offset rose (frames came later: a busy network or node) or fell
                    # since it was placed: the sound placed after the change moved with it
                    show_at += shared - placed
                if show_at > at:
                    break
                pending.popleft()
                inp.frame = picture

    def current(self, key: Key, now: float | None) -> av.VideoFrame | None:
        """The latest picture of ``key``; None when it has none (or, with ``now``, a stale one)."""
        inp = self._inputs.get(key)
        if inp is None or inp.frame is None:
            return None
        if now is not None and now - inp.last_video > STALE_S:
            return None
        return inp.frame

    def push(self, key: Key, frame: EncodedFrame) -> bool:
        """Decode one frame of ``key``; False when the mix does not use it."""
        stats = self._stats
        inp = self._inputs.get(key)
        if inp is not None and frame.kind == "video" and key in self._video:
            stats.frames_in += 1
            t = time.perf_counter()
            self._push_video(inp, frame)
            stats.decode_s += time.perf_counter() - t
            return True
        if (inp is not None and frame.kind == "audio" and key in self._audio
                and frame.codec in AUDIO_CODECS):
            stats.frames_in += 1
            t = time.perf_counter()
            self._push_audio(inp, frame)
            stats.audio_s += time.perf_counter() - t
            return True
        stats.frames_ignored += 1
        return False

    def _ask_keyframe(self, inp: _Input, at: float) -> None:
        if at - inp.asked_at < KEYFRAME_RETRY_S:
            return
        inp.asked_at = at
        self._stats.keyframe_requests += 1
        if self._request_keyframe is not None:
            self._request_keyframe(inp.key)

    def _push_video(self, inp: _Input, frame: EncodedFrame) -> None:
        if inp.vdec is None or inp.vepoch != frame.epoch or inp.vcodec != frame.codec:
            name = _DECODERS.get(frame.codec)
            if name is None:
                self._stats.frames_ignored += 1
                return
            dec = av.CodecContext.create(name, "r")
            assert isinstance(dec, av.VideoCodecContext)
            dec.thread_count = 1  # no frame-threading delay, and inputs are small
            inp.vdec, inp.vcodec, inp.vepoch, inp.need_key = dec, frame.codec, frame.epoch, True
            inp.vclock = TrackClock()
        self.has_media = True
        if inp.need_key:
            if not frame.keyframe:
                # The track's delay is learnt from these frames too: learnt from the key frame
                # alone (large, so late), the input's first pictures were held back too long.
                if self.origin is not None:
                    inp.sync.wall(frame, inp.vclock)
                self._ask_keyframe(inp, frame.arrival)
                return
            inp.need_key = False
        try:
            frames = inp.vdec.decode(av.Packet(frame.data))
        except av.FFmpegError:
            self._stats.decode_errors += 1
            inp.need_key = True
            self._ask_keyframe(inp, frame.arrival)
            return
        show_at = None if self.origin is None else inp.sync.wall(frame, inp.vclock) + LATENCY_S
        for decoded in frames:
            if show_at is None:
                inp.frame = decoded
            else:
                inp.pending.append((show_at, inp.sync.shared, decoded))
                if len(inp.pending) > MAX_PENDING:
                    inp.frame = inp.pending.popleft()[2]
            inp.last_video = frame.arrival
            self._stats.video_decoded += 1

    def _push_audio(self, inp: _Input, frame: EncodedFrame) -> None:
        mixer = self._mixer
        if mixer is None:
            return
        rate = frame.clock_rate or SAMPLE_RATE
        new_stream = (inp.adec is None or inp.aepoch != frame.epoch
                      or inp.adec.name != frame.codec)
        restart = new_stream or frame.arrival - inp.last_audio > AUDIO_PAUSE_S
        if new_stream:
            dec = av.CodecContext.create(frame.codec, "r")
            assert isinstance(dec, av.AudioCodecContext)
            if frame.codec == "opus":
                dec.sample_rate = SAMPLE_RATE
                # the TOC byte's stereo flag: what the publisher actually sends
                dec.layout = "stereo" if not frame.data or frame.data[0] & 0x04 else "mono"
            # AAC (an ingested publisher's): ADTS frames, whose headers give rate and layout
            inp.adec, inp.aepoch = dec, frame.epoch
            inp.aclock = TrackClock()
        elif not restart:
            missing = (frame.timestamp - inp.next_rtp) * SAMPLE_RATE // rate
            if missing <= -480:  # a duplicate, or a packet after its slot
                return
            if missing > SAMPLE_RATE // 400:  # lost packets (> 2.5 ms): keep time with silence
                mixer.push_silence(inp.key, min(missing, SAMPLE_RATE))
        self.has_media = True
        inp.last_audio = frame.arrival
        if restart and self.origin is None:
            mixer.push_silence(inp.key, max(0, AUDIO_PRIME - mixer.buffered(inp.key)))
        assert inp.adec is not None
        try:
            frames = inp.adec.decode(av.Packet(frame.data))
        except av.FFmpegError:
            self._stats.decode_errors += 1
            return
        early = 0 if self.origin is None else self._early(mixer, inp, frame)
        if early > SLIP:
            mixer.push_silence(inp.key, min(early, SAMPLE_RATE))
        samples = 0  # in the track's clock
        for decoded in frames:
            samples += decoded.samples * rate // (decoded.sample_rate or rate)
            mixer.push(inp.key, decoded)
        if early < -SLIP:
            mixer.drop(inp.key, -early)
        inp.next_rtp = frame.timestamp + samples

    def _early(self, mixer: AudioMixer, inp: _Input, frame: EncodedFrame) -> int:
        """Samples between ``inp``'s write position in the mixer and where ``frame`` belongs
        on the mix clock (positive: the frame is early)."""
        assert self.origin is not None
        wall = inp.sync.wall(frame, inp.aclock)
        target = round((wall + LATENCY_S - self.origin) * SAMPLE_RATE)
        return target - (mixer.clock + mixer.buffered(inp.key))
