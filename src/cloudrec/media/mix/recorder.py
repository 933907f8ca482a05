"""Mixed recording: many inputs' encoded frames → one composed, encoded HLS recording.

Pure media, no rooms: inputs are keyed by ``(roomid, uid)`` and get
:class:`~cloudrec.mediatypes.EncodedFrame` objects, decoded by
:class:`~cloudrec.media.mix.inputs.MixInputs` (video per input, Opus into the
:class:`~cloudrec.media.mix.mixer.AudioMixer`); the encoders and segments are
:mod:`cloudrec.media.mix.output`'s.

Clock: everything is an integer. Output video frame ``n`` lies at ``n * 90000 // fps`` ticks
(90 kHz) from the clock's anchor; audio is the mixer's sample count (``s * 90000 // 48000``).
The clock starts with the first tick after the first input media. :meth:`MixedHlsRecorder.tick`
takes the wall clock (``time.monotonic()``) and renders every frame due by then; when the
caller fell more than ``MAX_LAG_S`` behind, the missed frames are dropped (the next frame keeps
its real-time PTS), so the recording never drifts from real time. :meth:`advance_to` takes
media time instead (tests, benchmarks: as fast as possible). Each output frame composes the
*latest* decoded frame of each input (duplicated or dropped to the output rate) with
:class:`~cloudrec.media.mix.compose.Compositor`, then libx264 (``veryfast``, ``zerolatency``, no
B-frames, ``videobitrate``, GOP ``videogop``) encodes it and :class:`SeiInserter` adds
``base64seidata``. An input with no frame for 2 s counts as having no video (patch).

Audio: mixed from the inputs with ``streamtype`` 0 or 2, or every publisher of the room when
there is no input list; AAC-LC 48 kHz stereo 128 kbps. Each input's audio starts behind 64 ms
of silence: the jitter buffer that keeps a real-time mix from running dry between packets (so
the mix's audio lags its video by about that much).

Files: exactly like :class:`~cloudrec.media.source.SourceHlsRecorder` (same naming, durability,
resume with ``#EXT-X-DISCONTINUITY``). A segment starts on an IDR that the recorder forces when
the segment is due, so segments are ``segment_seconds`` long to the frame. Audio-only
recordings (recordtype 2) have no canvas and no encoder; their segments are cut by audio time.

Updates (:meth:`MixedHlsRecorder.update`) take effect on the next frame, in the same playlist:
a new layout, background, watermarks, patch or SEI keep the encoder; a new size, frame rate,
bit rate or GOP opens a new encoder, and its first frame starts a new segment marked
``#EXT-X-DISCONTINUITY``. Timestamps stay continuous either way.

Pause (:meth:`MixedHlsRecorder.pause`, ``pauserecord``) closes the open segment and stops the
clock; :meth:`~MixedHlsRecorder.resume` moves the clock's anchor by the paused time, so the
recording goes on without a gap, after ``#EXT-X-DISCONTINUITY``. Packet sinks
(:meth:`~MixedHlsRecorder.add_sink`: the live pushes of :mod:`cloudrec.media.push.fanout`) get every
encoded packet too.

Not thread-safe: one thread owns a recorder (see :mod:`cloudrec.recorder.mixed`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import av
from av.video.frame import PictureType

from cloudrec.media.audio import adts_header
from cloudrec.media.hls import PTS_ORIGIN, TS_CLOCK, SegmentInfo
from cloudrec.media.mix.compose import Compositor
from cloudrec.media.mix.inputs import LATENCY_S, Key, MixedStats, MixInputs
from cloudrec.media.mix.layout import Placement, placements_from_config
from cloudrec.media.mix.mixer import SAMPLE_RATE, AudioMixer
from cloudrec.media.mix.output import (
    MixedSegments,
    VideoEncoder,
    VideoParams,
    open_aac_encoder,
    open_h264_encoder,
)
from cloudrec.media.mix.sei import SeiInserter
from cloudrec.media.segmenter import unix_time
from cloudrec.mediatypes import EncodedFrame
from cloudrec.models.mixconfig import MixConfig

log = logging.getLogger(__name__)

__all__ = ["MixedHlsRecorder", "MixedStats"]

MAX_LAG_S = 0.5  # a caller this far behind real time drops frames instead of catching up
AUDIO_ONLY_TICK_HZ = 25  # how often an audio-only recording mixes


class PacketSink(Protocol):
    """Where encoded packets also go: H.264 Annex B access units and raw AAC frames, with
    their 90 kHz PTS."""

    def video(self, data: bytes, pts: int, key: bool) -> None: ...

    def audio(self, data: bytes, pts: int) -> None: ...

    def close(self) -> None: ...


class MixedHlsRecorder:
    """Compose, mix and encode the inputs of one mixed recording into HLS in ``spool_dir``.

    ``roomid`` is the task's room (the one a template lays out). ``video``/``audio`` say which
    tracks the recording has (from recordtype and the output's streamtype); they never change.
    ``pictures`` maps picture URLs to their fetched bytes (see
    :func:`~cloudrec.media.mix.overlay.picture_urls`).
    ``request_keyframe(key)`` is called when an input's decoder needs a key frame.
    """

    def __init__(
        self,
        spool_dir: Path,
        basename: str,
        mixconfig: MixConfig,
        roomid: str,
        *,
        video: bool = True,
        audio: bool = True,
        pictures: Mapping[str, bytes] | None = None,
        segment_seconds: float = 6.0,
        on_segment: Callable[[SegmentInfo], None] | None = None,
        request_keyframe: Callable[[Key], None] | None = None,
        resume: bool = False,
        encoder_threads: int | None = None,
        on_canvas: Callable[[av.VideoFrame, float, bool], None] | None = None,
    ) -> None:
        if not (audio or video):
            raise ValueError("a recording needs audio, video or both")
        out = mixconfig.output
        if video and not out.has_video:
            raise ValueError("the output has no video")
        self._video, self._audio = video, audio
        self._roomid = roomid
        self._threads = encoder_threads
        # each composed frame, its media time and whether an input's picture is on it
        self._on_canvas = on_canvas
        self._pictures: dict[str, bytes] = dict(pictures or {})
        self.stats = MixedStats()
        self._config = mixconfig
        self._all_uids: list[str] = []
        self._video_uids: list[str] = []
        self._placements: list[Placement] = []
        self._compositor: Compositor | None = None
        self._sei: SeiInserter | None = None
        self._params: VideoParams | None = None
        if video:
            self._compositor = Compositor.from_output(out, self._pictures)
            self._sei = SeiInserter(out.seidata) if out.seidata else None
            self._params = VideoParams.of(out)
        self._encoder: VideoEncoder | None = None
        self._reopen = False
        self._mixer = AudioMixer() if audio else None
        self._aac = open_aac_encoder() if audio else None
        if audio:
            self._note_encoder("aac")
        self._inputs = MixInputs(self._mixer, self.stats, request_keyframe)
        self._relayout()
        # the clock: frame n at _anchor_ticks + (n - _anchor_frame) * 90000 // fps
        self._fps = self._params.fps if self._params else AUDIO_ONLY_TICK_HZ
        self._anchor_ticks = 0
        self._anchor_frame = 0
        self._next_frame = 0
        self._t0: float | None = None
        self._out = MixedSegments(spool_dir, basename, video=video, audio=audio,
                                  segment_seconds=segment_seconds, on_segment=on_segment,
                                  resume=resume)
        self._closed = False
        self._paused_at: float | None = None  # pauserecord: when the pause began
        self._sinks: list[PacketSink] = []  # live pushes: every encoded packet, too

    # -- state -------------------------------------------------------------------------------

    @property
    def playlist_path(self) -> Path:
        return self._out.playlist_path

    @property
    def segments(self) -> list[SegmentInfo]:
        return self._out.segments

    @property
    def duration(self) -> float:
        return self._out.duration

    def merge_segments(self, returned: list[SegmentInfo]) -> list[SegmentInfo]:
        """List segments a returning node stored (see ``HlsSegmenter.merge``)."""
        return self._out.merge(returned)

    @property
    def started(self) -> bool:
        """Whether the clock runs (the first media came and a tick followed)."""
        return self._t0 is not None or self._next_frame > 0

    @property
    def tick_interval(self) -> float:
        """How often :meth:`tick` is worth calling: one output frame (audio only: 40 ms)."""
        return 1.0 / self._fps

    @property
    def wanted(self) -> frozenset[Key]:
        """The inputs the mix uses now."""
        return self._inputs.keys

    @property
    def placements(self) -> list[Placement]:
        return list(self._placements)

    @property
    def mixconfig(self) -> MixConfig:
        return self._config

    def _relayout(self) -> None:
        cfg = self._config
        self._placements = (
            placements_from_config(cfg, self._roomid, self._video_uids) if self._video else []
        )
        audio_keys: list[Key] = []
        if self._audio:
            if cfg.inputs:
                audio_keys = [(i.roomid, i.uid) for i in cfg.inputs if i.has_audio]
            else:
                audio_keys = [(self._roomid, uid) for uid in self._all_uids]
        self._inputs.set_keys((p.key for p in self._placements), audio_keys)

    def set_publishers(self, uids: Sequence[str], video_uids: Sequence[str] | None = None) -> None:
        """The task room's publishers in join order (``video_uids``: those with video, which
        fill a template's slots). Used by templates and by audio mixing without an input list."""
        self._all_uids = list(uids)
        self._video_uids = list(uids if video_uids is None else video_uids)
        self._relayout()

    def unpublished(self, key: Key) -> None:
        """The input stopped publishing: it has no video from now on (patch)."""
        self._inputs.unpublished(key)

    def resync(self, key: Key) -> None:
        """Frames of ``key`` were dropped before they got here (an overloaded worker)."""
        self._inputs.resync(key)

    def push(self, key: Key, frame: EncodedFrame) -> bool:
        """Take one encoded frame of input ``key``; False when the mix does not use it."""
        if self._closed:
            return False
        return self._inputs.push(key, frame)

    # -- the clock ---------------------------------------------------------------------------

    def tick(self, now: float) -> int:
        """Render what is due at wall-clock ``now`` (``time.monotonic()``); returns frames made.

        The clock starts at the first call after some input media arrived."""
        if self._closed or self._paused_at is not None:
            return 0
        if self._t0 is None:
            if not self._inputs.has_media:
                return 0
            self._t0 = self._inputs.origin = now
            self._set_clock()
        return self.advance_to(round((now - self._t0) * TS_CLOCK), now=now)

    def _set_clock(self) -> None:
        """The room timeline: what the mix shows at clock tick 0 was at the inputs' wall time
        ``_t0 - LATENCY_S``."""
        assert self._t0 is not None
        self._out.set_clock(self._pts(0), unix_time(self._t0) - LATENCY_S)

    def _frame_ticks(self, n: int) -> int:
        return self._anchor_ticks + (n - self._anchor_frame) * TS_CLOCK // self._fps

    def advance_to(self, ticks: int, *, now: float | None = None) -> int:
        """Render every output frame whose time is at or before ``ticks`` (90 kHz since the
        clock started) and mix audio up to it. With ``now`` (real-time mode), frames more than
        ``MAX_LAG_S`` late are dropped and inputs whose video went stale are patched."""
        if self._closed:
            return 0
        made = 0
        if self._video:
            if now is not None:
                late = (ticks - self._frame_ticks(self._next_frame)) * self._fps // TS_CLOCK
                if late > MAX_LAG_S * self._fps:
                    self.stats.frames_skipped += late
                    self._next_frame += late
            while self._frame_ticks(self._next_frame) <= ticks:
                self._render(self._next_frame, now)
                self._next_frame += 1
                made += 1
        else:
            self._next_frame = max(self._next_frame, 1)
        if self._audio:
            self._mix_to(ticks)
            if self._video:
                self._out.flush_audio(self._pts(self._frame_ticks(self._next_frame)))
        return made

    def _pts(self, ticks: int) -> int:
        return PTS_ORIGIN + self._out.base + ticks

    # -- video -------------------------------------------------------------------------------

    def _render(self, n: int, now: float | None) -> None:
        assert self._compositor is not None and self._params is not None
        rel = self._frame_ticks(n)
        if self._reopen:
            self._switch_encoder()
        if self._audio:
            self._mix_to(rel)
        if self._t0 is not None:
            self._inputs.show(self._t0 + rel / TS_CLOCK)
        t = time.perf_counter()
        current = self._inputs.current
        layers = [(p, current(p.key, now)) for p in self._placements]
        canvas = self._compositor.compose(layers, time.time())
        if self._on_canvas is not None:
            self._on_canvas(canvas, rel / TS_CLOCK, any(f is not None for _, f in layers))
        t1 = time.perf_counter()
        self.stats.compose_s += t1 - t
        if self._encoder is None:
            ctx = open_h264_encoder(self._params, self._threads)
            self._encoder = VideoEncoder(ctx, self._params, rel, n)
            self._note_encoder("libx264")
        canvas.pts = n - self._encoder.anchor_frame
        canvas.pict_type = PictureType.I if self._out.due(self._pts(rel)) else PictureType.NONE
        packets = self._encoder.ctx.encode(canvas)
        self.stats.encode_s += time.perf_counter() - t1
        self.stats.frames_out += 1
        end = self._pts(self._frame_ticks(n + 1))
        for packet in packets:
            self._video_packet(packet, self._encoder, end)

    def _video_packet(self, packet: av.Packet, enc: VideoEncoder, end: int) -> None:
        pts = self._pts(enc.ticks((packet.pts or 0) + enc.anchor_frame))
        data = bytes(packet)
        if self._sei is not None:
            data = self._sei(data)
        self._out.video(data, pts, bool(packet.is_keyframe), end)
        for sink in self._sinks:
            sink.video(data, pts, bool(packet.is_keyframe))

    def _switch_encoder(self) -> None:
        """Drain and drop the encoder and end the segment before an output change; the next
        frame opens a new encoder and a new segment after #EXT-X-DISCONTINUITY."""
        self._reopen = False
        enc, self._encoder = self._encoder, None
        if enc is None:
            return
        for packet in enc.ctx.encode(None):
            self._video_packet(packet, enc, self._out.end or 0)
        self._out.cut()

    # -- audio -------------------------------------------------------------------------------

    def _mix_to(self, rel_ticks: int) -> None:
        assert self._mixer is not None and self._aac is not None
        t = time.perf_counter()
        for frame in self._mixer.mix_until(rel_ticks * SAMPLE_RATE // TS_CLOCK):
            self._aac_packets(self._aac.encode(frame))
        self.stats.audio_s += time.perf_counter() - t

    def _aac_packets(self, packets: list[tuple[bytes, int, int]]) -> None:
        for payload, sample, duration in packets:
            pts = self._pts(sample * TS_CLOCK // SAMPLE_RATE)
            end = pts + duration * TS_CLOCK // SAMPLE_RATE
            self.stats.audio_frames_out += 1
            self._out.audio(adts_header(len(payload), 2) + payload, pts, end)
            for sink in self._sinks:
                sink.audio(payload, pts)

    # -- updates -----------------------------------------------------------------------------

    def update(self, mixconfig: MixConfig, pictures: Mapping[str, bytes] | None = None) -> None:
        """Apply a new layout and output from the next frame on (see the module docstring).

        Raises ValueError when the new output lacks a track this recording has."""
        out = mixconfig.output
        if self._video and not out.has_video:
            raise ValueError("the output must keep its video during the recording")
        if self._audio and not out.has_audio:
            raise ValueError("the output must keep its audio during the recording")
        self._pictures.update(pictures or {})
        if self._video:
            self._compositor = Compositor.from_output(out, self._pictures, self._compositor)
            self._sei = SeiInserter(out.seidata) if out.seidata else None
            params = VideoParams.of(out)
            if params != self._params:
                self._params = params
                self._reopen = True
                if params.fps != self._fps:  # re-anchor the frame clock where the next frame is
                    self._anchor_ticks = self._frame_ticks(self._next_frame)
                    self._anchor_frame = self._next_frame
                    self._fps = params.fps
        self._config = mixconfig
        self._relayout()

    def _note_encoder(self, name: str) -> None:
        if name not in self.stats.encoders:
            self.stats.encoders.append(name)

    # -- pause and live push -----------------------------------------------------------------

    def pause(self, now: float) -> None:
        """``pauserecord``: nothing is composed, encoded or written until :meth:`resume`; the
        open segment ends now (so it is stored during the pause). The caller stops feeding
        input frames meanwhile."""
        if self._closed or self._paused_at is not None:
            return
        self._paused_at = now
        self._out.cut()

    def resume(self, now: float) -> None:
        """``resumerecord``: the clock goes on where the pause began (its anchor moves by the
        paused time), so the next frame follows the last one without a gap; its IDR starts a
        segment after #EXT-X-DISCONTINUITY. Inputs drop what waited from before the pause and
        decode again from their next key frame."""
        if self._paused_at is None:
            return
        if self._t0 is not None:
            self._t0 += max(0.0, now - self._paused_at)
            self._inputs.origin = self._t0
            self._set_clock()
        self._paused_at = None
        self._inputs.restart()

    @property
    def paused(self) -> bool:
        return self._paused_at is not None

    def add_sink(self, sink: PacketSink) -> None:
        """Hand every encoded packet to ``sink`` as well (a live push, which must not block:
        see :mod:`cloudrec.media.push.fanout`); it is closed with the recorder."""
        self._sinks.append(sink)

    def close(self) -> SegmentInfo | None:
        """Drain the encoders, close the last segment, end the playlist with #EXT-X-ENDLIST."""
        if self._closed:
            return None
        self._closed = True
        if self._encoder is not None:
            for packet in self._encoder.ctx.encode(None):
                self._video_packet(packet, self._encoder, self._out.end or 0)
        if self._aac is not None and self.started and self._paused_at is None:
            end = self._out.end
            if self._video and end is not None:
                self._mix_to(end - PTS_ORIGIN - self._out.base)
            self._aac_packets(self._aac.encode(None))
        try:
            return self._out.close()
        finally:
            for sink in self._sinks:
                sink.close()
