"""Source recording: one publisher's encoded frames → an HLS playlist of MPEG-TS segments.

H.264 is remuxed (never decoded or encoded); other video codecs go through
:class:`~cloudrec.media.transcode.VideoTranscoder`; AAC-LC is remuxed and Opus (or other AAC)
becomes AAC-LC 48 kHz (:mod:`cloudrec.media.audiotrack`). With ``audio_codec="opus"`` the
segments are fMP4 (:mod:`cloudrec.media.fmp4`) and Opus is kept as it came (AAC audio is then
not recorded).

Timeline: every timestamp is an integer in 90 kHz ticks. A track's first frame is anchored to
its time on the server's clock (the offset from the recording's first frame, converted to ticks
once), after which the track follows its RTP clock (video) or its sample count (audio). That
time is the frame's arrival, or its capture time (``wallclock``, from sender reports) plus the
least ``arrival - wallclock`` seen; audio with a capture time is kept where the video of that
capture time is (the latest video frame's PTS and ``wallclock``), even when it arrives later.
A pause (> ``PAUSE_S`` of RTP or arrival time) or a new epoch re-anchors the track, never
earlier than the end of what it already wrote, so PTS only rise.

Segments: a segment starts on an IDR and is "led" by video. The recorder asks for a key frame
when the segment nears ``segment_seconds`` and cuts at the first IDR from then on. A pause or a
new epoch ends the segment at the last frame before it; the next one is marked
``#EXT-X-DISCONTINUITY``. Audio of an audio+video recording waits in a small queue until video
has passed its PTS, so each audio packet lands in the segment its time belongs to. When no
video comes (camera off, no IDR yet) for a while, audio leads: segments are cut by audio time.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cloudrec.media.audiotrack import AudioPacket, AudioTrack
from cloudrec.media.codecs import h264
from cloudrec.media.hls import PTS_ORIGIN, TS_CLOCK, SegmentInfo
from cloudrec.media.segmenter import HlsSegmenter, OpenSegment, unix_time
from cloudrec.media.transcode import VideoTranscoder
from cloudrec.media.videoclock import VideoClock
from cloudrec.mediatypes import EncodedFrame

PAUSE_S = 1.0  # a gap longer than this (RTP or arrival time) is a pause
KEYFRAME_LEAD_S = 0.3  # ask for a key frame this long before the segment is due
KEYFRAME_RETRY_S = 1.0  # ask again when none came within this
AUDIO_WAIT_S = 3.0  # with no IDR for this long, audio leads the segments
MAX_AUDIO_QUEUE_S = 3.0  # audio waiting for video never holds more than this


@dataclass
class RecorderStats:
    """Counters; units are video access units and audio packets."""

    frames_in: int = 0
    frames_written: int = 0
    frames_dropped: int = 0
    keyframe_requests: int = 0
    video_transcoded: bool = False
    encoders: list[str] = field(default_factory=list)  # encoders opened, e.g. ["aac"]


@dataclass(slots=True)
class _Open(OpenSegment):
    """The segment being written, and what the cut policy keeps of it."""

    led: str = "video"  # "video" or "audio": the track whose time cuts it
    lead_end: int = 0  # end of the latest packet of the leading track
    asked: bool = False  # a key frame was requested for its cut
    fresh: bool = False  # started from nothing (recording start, after a break): no audio before it


class SourceHlsRecorder:
    """Record one publisher's frames as HLS in ``spool_dir``. Not thread-safe: one caller."""

    def __init__(
        self,
        spool_dir: Path,
        basename: str,
        *,
        audio: bool,
        video: bool,
        segment_seconds: float = 6.0,
        on_segment: Callable[[SegmentInfo], None] | None = None,
        request_keyframe: Callable[[], None] | None = None,
        resume: bool = False,
        clock: Callable[[], float] = time.monotonic,
        audio_codec: str = "aac",
    ) -> None:
        if not (audio or video):
            raise ValueError("a recording needs audio, video or both")
        if segment_seconds <= KEYFRAME_LEAD_S:
            raise ValueError("segment_seconds too short")
        self._audio, self._video = audio, video
        self._request_keyframe = request_keyframe
        self._clock = clock
        self._seg_ticks = round(segment_seconds * TS_CLOCK)
        self._cut_ticks = self._seg_ticks - round(KEYFRAME_LEAD_S * TS_CLOCK)
        self._fmp4 = audio_codec == "opus"
        self._segs = HlsSegmenter(spool_dir, basename, video=video, audio=audio,
                                  segment_seconds=segment_seconds, segment_type=_Open,
                                  on_segment=on_segment, resume=resume, fmp4=self._fmp4)
        self._audio_codecs = ("opus",) if audio_codec == "opus" else ("opus", "aac")
        self.stats = RecorderStats()
        self._base = self._segs.base  # ticks added to every timestamp (past a resumed one's)

        self._t0: float | None = None
        self._closed = False
        self._vclock = VideoClock(PAUSE_S)
        self._atrack = AudioTrack(PAUSE_S, keep_opus=audio_codec == "opus")
        self._params = h264.ParameterSetCache()
        self._transcoder: VideoTranscoder | None = None
        self._video_codec = "h264"
        self._force_idr = False
        self._kf_asked_at: float | None = None
        self._last_vpts = 0
        self._last_idr: bytes | None = None  # fMP4: the picture an audio-led stretch holds
        self._last_video_arrival = 0.0
        self._audio_end = 0  # end of the latest audio packet (ticks) and when its frame came
        self._last_audio_arrival: float | None = None
        self._pending: deque[AudioPacket] = deque()  # audio waiting for video to pass it
        self._run_start = 0  # PTS where the queued audio last resumed after a break
        self._paused_at: float | None = None  # pauserecord: when the pause began
        self._sync: tuple[int, float | None] = (-1, None)  # (epoch, least arrival - wallclock)
        self._vsync: tuple[int, int, float] | None = None  # video (epoch, pts, wallclock)

    # -- public ------------------------------------------------------------------------------

    @property
    def playlist_path(self) -> Path:
        return self._segs.playlist_path

    @property
    def segments(self) -> list[SegmentInfo]:
        """The closed segments, in order (a resume starts with those it found)."""
        return self._segs.segments

    @property
    def duration(self) -> float:
        """Seconds recorded so far (closed segments plus the open one)."""
        return self._segs.duration

    def push(self, frame: EncodedFrame) -> None:
        """Take one encoded frame; may close a segment (and call ``on_segment``) on the way."""
        if self._closed:
            raise RuntimeError("recorder is closed")
        self.stats.frames_in += 1
        if self._t0 is None:
            self._t0 = frame.arrival
            self._segs.set_clock(PTS_ORIGIN + self._base, unix_time(frame.arrival))
        if frame.kind == "video" and self._video:
            self._push_video(frame)
        elif frame.kind == "audio" and self._audio and frame.codec in self._audio_codecs:
            dropped = self._atrack.dropped
            vsync, at = self._vsync, None
            if vsync is not None and frame.wallclock is not None and vsync[0] == frame.epoch:
                at = vsync[1] + round((frame.wallclock - vsync[2]) * TS_CLOCK)
            packets = self._atrack.push(frame, self._to_ticks, when=self._when(frame), at=at)
            self.stats.frames_dropped += self._atrack.dropped - dropped
            self._note_encoder(self._atrack.encoder_name)
            for packet in packets:
                self._audio_packet(packet, frame.arrival)
        else:
            self.stats.frames_dropped += 1

    @property
    def audio_behind(self) -> bool:
        """The open segment's audio has not reached its last picture's time while the publisher's
        audio flows: a stop waits for it a moment (audio travels apart from video, and a
        last segment with pictures but no sound never ends in a browser's player: its
        buffered range, audio and video together, does not grow)."""
        seg = self._segs.open
        if not (self._audio and self._video) or seg is None or seg.led != "video":
            return False
        if self._last_audio_arrival is None or self._paused_at is not None:
            return False
        if self._last_video_arrival - self._last_audio_arrival > PAUSE_S:
            return False  # the audio stopped: nothing to wait for
        return self._audio_end <= self._last_vpts

    def merge_segments(self, returned: list[SegmentInfo]) -> list[SegmentInfo]:
        """List segments stored for this recording by a node that came back (see
        :meth:`~cloudrec.media.segmenter.HlsSegmenter.merge`)."""
        return self._segs.merge(returned)

    def pause(self, now: float) -> None:
        """``pauserecord``: end the open segment where its media ends (it is stored now, not
        after the pause); frames must not be pushed until :meth:`resume`."""
        if self._closed or self._paused_at is not None:
            return
        self._paused_at = now
        self._flush_pending(None)
        if self._segs.open is not None:
            self._finish(self._segs.open.end)
        self._segs.next_discontinuity = True

    def resume(self, now: float) -> None:
        """``resumerecord``: the next segment follows #EXT-X-DISCONTINUITY and the timeline
        goes on where the pause began. The recording clock is moved forward by the paused
        time and both tracks re-anchor on their next frame, so the pause leaves no gap."""
        if self._paused_at is None:
            return
        if self._t0 is not None:
            self._t0 += max(0.0, now - self._paused_at)
        self._paused_at = None
        self._vclock.rebase = True
        self._atrack.rebase()
        self._vsync = None  # pre-pause video would place audio the paused time too late
        self._force_idr = True  # our own encoder (VP8 input): start on a key frame

    def close(self) -> SegmentInfo | None:
        """Flush everything, close the last segment, end the playlist with #EXT-X-ENDLIST."""
        if self._closed:
            return None
        self._closed = True
        if self._paused_at is not None:  # stopped while paused: what the encoders hold is
            self._segs.end_playlist()  # from before the pause; dropped
            return None
        if self._transcoder is not None:
            for data, pts, key in self._transcoder.flush():
                self._video_au(data, pts, key)
        if self._audio:
            for packet in self._atrack.flush():
                self._audio_packet(packet, self._last_video_arrival)
            if self._pending and self._segs.open is None:
                self._lead_with_audio()
            self._flush_pending(None)
        if self._segs.open is None:
            self._segs.end_playlist()
            return None
        return self._finish(self._segs.open.end, final=True)

    # -- video -------------------------------------------------------------------------------

    def _to_ticks(self, arrival: float) -> int:
        assert self._t0 is not None
        return PTS_ORIGIN + self._base + round((arrival - self._t0) * TS_CLOCK)

    def _when(self, frame: EncodedFrame) -> float:
        """``frame``'s time on the server's clock: its arrival, or its capture time on the
        publisher's clock plus the least ``arrival - wallclock`` seen in this epoch."""
        wall = frame.wallclock
        if wall is None:
            return frame.arrival
        epoch, offset = self._sync
        seen = frame.arrival - wall
        if epoch != frame.epoch or offset is None or seen < offset:
            self._sync = (frame.epoch, seen)
            offset = seen
        return wall + offset

    def _push_video(self, frame: EncodedFrame) -> None:
        placed = self._vclock.place(frame, self._to_ticks, self._when(frame))
        if placed is None:
            self.stats.frames_dropped += 1
            return
        pts, brk = placed
        if frame.wallclock is not None:
            self._vsync = (frame.epoch, pts, frame.wallclock)
        self._last_video_arrival = frame.arrival
        self._video_codec = frame.codec
        if brk is not None:
            self._video_break(brk)
        if frame.codec == "h264":
            data, key = self._params.take(frame.data)
            self._video_au(data, pts, key)
            return
        if self._transcoder is None:
            self._transcoder = VideoTranscoder(frame.codec)
            self.stats.video_transcoded = True
        seg = self._segs.open
        due = seg is not None and seg.led == "video" and pts - seg.start >= self._seg_ticks
        force, self._force_idr = self._force_idr or due, False  # our encoder cuts on time
        units = self._transcoder.transcode(frame.data, pts, force_idr=force)
        if self._transcoder.opened:
            self._note_encoder(self._transcoder.encoder_name)
        if not units:  # undecodable (no key frame yet, or corrupt): the publisher must send one
            self.stats.frames_dropped += 1
            self._ask_publisher(urgent=False)
        for data, out_pts, key in units:
            self._video_au(data, out_pts, key)

    def _video_break(self, reason: str) -> None:
        """A pause or a new epoch on the video track: end the segment at its last frame."""
        if self._transcoder is not None:
            if reason == "epoch":
                self._transcoder.reset()
            self._force_idr = True
        seg = self._segs.open
        if seg is not None and seg.led == "video":
            self._flush_pending(seg.lead_end)
            self._finish(seg.lead_end)
        self._segs.next_discontinuity = True

    def _video_au(self, data: bytes, pts: int, key: bool) -> None:
        seg = self._segs.open
        if seg is None or seg.led == "audio":
            if not key:  # a segment (and the recording) starts on an IDR
                self.stats.frames_dropped += 1
                self._want_idr(urgent=False)
                return
            self._flush_pending(pts)
            disc, fresh = self._segs.next_discontinuity, seg is None
            if seg is not None:
                self._finish(pts)
                disc = True  # video joins an audio-led stretch: players should reset
            seg = self._start(pts, "video", disc)
            seg.fresh = fresh
        elif key and pts - seg.start >= self._cut_ticks:
            self._flush_pending(pts)
            self._finish(pts)
            seg = self._start(pts, "video", False)
        elif pts - seg.start >= self._cut_ticks and self._video_codec == "h264":
            self._want_idr(urgent=not seg.asked)
            seg.asked = True
        self._write(seg, "video", data, pts, key, pts + self._vclock.interval, lead=True)
        self._last_vpts = pts
        if key and self._fmp4:
            self._last_idr = data
        self._flush_pending(pts + 1)

    def _want_idr(self, *, urgent: bool) -> None:
        if self._video_codec != "h264" and self._transcoder is not None:
            self._force_idr = True  # our own encoder: the next frame becomes an IDR
        else:
            self._ask_publisher(urgent=urgent)

    def _ask_publisher(self, *, urgent: bool) -> None:
        now = self._clock()
        if (
            not urgent
            and self._kf_asked_at is not None
            and now - self._kf_asked_at < KEYFRAME_RETRY_S
        ):
            return
        self._kf_asked_at = now
        self.stats.keyframe_requests += 1
        if self._request_keyframe is not None:
            self._request_keyframe()

    # -- audio -------------------------------------------------------------------------------

    def _audio_packet(self, packet: AudioPacket, arrival: float) -> None:
        self._audio_end = max(self._audio_end, packet.end)
        self._last_audio_arrival = arrival
        seg = self._segs.open
        if not self._video or (seg is not None and seg.led == "audio"):
            self._audio_led(packet)
            return
        if packet.gap or not self._pending:
            self._run_start = packet.pts
        self._pending.append(packet)
        if seg is None:  # waiting for an IDR
            if self._pending_run() >= AUDIO_WAIT_S * TS_CLOCK:
                self._lead_with_audio()
            while self._pending_span() > AUDIO_WAIT_S * TS_CLOCK:  # keep the queue bounded
                self._pending.popleft()
                self.stats.frames_dropped += 1
            return
        self._flush_pending(self._last_vpts + 1)
        if self._pending_run() >= PAUSE_S * TS_CLOCK and (
            arrival - self._last_video_arrival > PAUSE_S
        ):
            # video stopped while audio goes on: end the video stretch, let audio lead
            self._flush_pending(seg.lead_end)
            self._finish(seg.lead_end)
            self._segs.next_discontinuity = True
            self._lead_with_audio()
        else:
            while self._pending and self._pending_span() > MAX_AUDIO_QUEUE_S * TS_CLOCK:
                self._flush_pending(self._pending[0].pts + 1)

    def _pending_span(self) -> int:
        return self._pending[-1].end - self._pending[0].pts if self._pending else 0

    def _pending_run(self) -> int:
        """How long queued audio has flowed without a break (a pause inside does not count)."""
        if not self._pending:
            return 0
        return self._pending[-1].end - max(self._run_start, self._pending[0].pts)

    def _flush_pending(self, limit: int | None) -> None:
        """Write queued audio with PTS below ``limit`` (all when None) to the open segment."""
        pending = self._pending
        while pending and (limit is None or pending[0].pts < limit):
            packet = pending.popleft()
            seg = self._segs.open
            if seg is None or (seg.fresh and packet.pts < seg.start):
                self.stats.frames_dropped += 1  # audio from before the IDR that starts video
            else:
                self._write(seg, "audio", packet.data, packet.pts, False, packet.end)

    def _lead_with_audio(self) -> None:
        pending, self._pending = self._pending, deque()
        for packet in pending:
            self._audio_led(packet)

    def _audio_led(self, packet: AudioPacket) -> None:
        seg = self._segs.open
        if seg is not None and packet.gap:
            self._finish(seg.end)
            seg = None
        elif seg is not None and packet.end - seg.start > self._seg_ticks:
            self._finish(packet.pts)
            seg = None
        if seg is None:
            seg = self._start(packet.pts, "audio",
                              self._segs.next_discontinuity or packet.gap)
        self._write(seg, "audio", packet.data, packet.pts, False, packet.end, lead=True)

    # -- segments ----------------------------------------------------------------------------

    def _note_encoder(self, name: str | None) -> None:
        if name is not None and name not in self.stats.encoders:
            self.stats.encoders.append(name)

    def _start(self, pts: int, led: str, discontinuity: bool) -> _Open:
        seg = self._segs.start(pts, discontinuity)
        seg.led, seg.lead_end = led, pts
        return seg

    def _write(
        self, seg: _Open, kind: str, data: bytes, pts: int, key: bool, end: int, lead: bool = False
    ) -> None:
        seg.writer.write(kind, data, pts, keyframe=key)
        seg.end = max(seg.end, end)
        if lead:
            seg.lead_end = end
        self.stats.frames_written += 1

    def _finish(self, end: int, *, final: bool = False) -> SegmentInfo:
        seg = self._segs.open
        if (seg is not None and seg.led == "audio" and self._last_idr is not None
                and end > seg.start):
            # fMP4, camera off: the stretch holds the last key frame's picture. A browser's
            # player keeps an fMP4 stream's audio and video in one buffer, whose range is
            # where both are: a stretch without pictures is a hole there, and its sound is
            # skipped (the playlist's end then never comes).
            seg.writer.write("video", self._last_idr, seg.start, keyframe=True,
                             duration=end - seg.start)
        return self._segs.finish(end, final=final)
