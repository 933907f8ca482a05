"""The output side of a mix: its encoders, and its HLS segments.

:func:`open_h264_encoder` and :func:`open_aac_encoder` are the codec settings of every mix (the
benchmark opens the same ones). :class:`MixedSegments` writes the encoded output exactly like a
source recording does: both are an :class:`~cloudrec.media.segmenter.HlsSegmenter` (same file
names, durability, playlist, resume after ``#EXT-X-DISCONTINUITY``). With video, segments are
led by video and cut on the IDR the mix forces when a segment is due, audio waiting in a queue
until video has passed its PTS so each packet lands in the segment its time belongs to;
audio-only segments are cut by audio time.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from cloudrec.media.audio import AacEncoder
from cloudrec.media.hls import TS_CLOCK, SegmentInfo
from cloudrec.media.segmenter import HlsSegmenter, OpenSegment
from cloudrec.models.mixconfig import MixOutput

AAC_BIT_RATE = 128_000


@dataclass(frozen=True, slots=True)
class VideoParams:
    """What the encoder is opened with; a change means a new encoder."""

    width: int
    height: int
    fps: int
    bitrate_kbps: int
    gop: int

    @classmethod
    def of(cls, output: MixOutput) -> VideoParams:
        assert output.videowidth is not None and output.videoheight is not None
        return cls(output.videowidth, output.videoheight, output.videofps,
                   output.videobitrate or 1000, output.videogop)


def default_threads(width: int, height: int) -> int:
    """libx264 threads: 1 up to 720p (the least CPU per frame, and fast enough), 2 above."""
    return 1 if width * height <= 1280 * 720 else 2


def open_h264_encoder(params: VideoParams, threads: int | None = None) -> av.VideoCodecContext:
    """libx264 as a mix encodes: veryfast, zerolatency, no B-frames, ABR at the bit rate,
    keyint = GOP, SPS/PPS before every IDR, an IDR on request (``pict_type = I``).
    Time base 1/fps: a frame's pts is its index."""
    enc = av.CodecContext.create("libx264", "w")
    assert isinstance(enc, av.VideoCodecContext)
    enc.width, enc.height, enc.pix_fmt = params.width, params.height, "yuv420p"
    enc.time_base = Fraction(1, params.fps)
    enc.framerate = Fraction(params.fps, 1)
    enc.bit_rate = params.bitrate_kbps * 1000
    enc.gop_size = params.gop
    enc.max_b_frames = 0
    enc.thread_count = threads or default_threads(params.width, params.height)
    enc.options = {
        "preset": "veryfast",
        "tune": "zerolatency",
        "forced-idr": "1",
        "x264-params": "repeat-headers=1:bframes=0",
    }
    enc.open()
    return enc


@dataclass(slots=True)
class VideoEncoder:
    """An open encoder and where its frame clock is anchored."""

    ctx: av.VideoCodecContext
    params: VideoParams
    anchor_ticks: int  # clock ticks of frame ``anchor_frame``
    anchor_frame: int

    def ticks(self, index: int) -> int:
        return self.anchor_ticks + (index - self.anchor_frame) * TS_CLOCK // self.params.fps



def open_aac_encoder() -> AacEncoder:
    """AAC-LC 48 kHz stereo 128 kbps: FFmpeg's ``aac`` with the fast coder, as source audio,
    and silence written without encoding (see :class:`~cloudrec.media.audio.AacEncoder`)."""
    return AacEncoder(2, AAC_BIT_RATE)


class MixedSegments(HlsSegmenter[OpenSegment]):
    """The playlist and segments of one mix in ``spool_dir``; timestamps are 90 kHz ticks."""

    def __init__(
        self,
        spool_dir: Path,
        basename: str,
        *,
        video: bool,
        audio: bool,
        segment_seconds: float,
        on_segment: Callable[[SegmentInfo], None] | None = None,
        resume: bool = False,
    ) -> None:
        super().__init__(spool_dir, basename, video=video, audio=audio,
                         segment_seconds=segment_seconds, segment_type=OpenSegment,
                         on_segment=on_segment, resume=resume)
        self.seg_ticks = round(segment_seconds * TS_CLOCK)
        self._pending: deque[tuple[bytes, int, int]] = deque()  # audio waiting for video

    @property
    def end(self) -> int | None:
        """The end of what the open segment holds (None when none is open)."""
        return self.open.end if self.open is not None else None

    def due(self, pts: int) -> bool:
        """Whether a video frame at ``pts`` should be an IDR that starts a segment."""
        return self.open is None or pts - self.open.start >= self.seg_ticks

    def video(self, data: bytes, pts: int, key: bool, end: int) -> None:
        """One access unit; an IDR starts a segment when none is open or one is due."""
        seg = self.open
        if seg is None:
            if not key:
                return
            seg = self.start(pts, self.next_discontinuity)
            self.flush_audio(pts)  # audio the AAC encoder held back over an encoder switch
        elif key and pts - seg.start >= self.seg_ticks:
            self.flush_audio(pts)
            self.finish(pts)
            seg = self.start(pts, self.next_discontinuity)
        seg.writer.write("video", data, pts, keyframe=key)
        seg.end = max(seg.end, end)

    def audio(self, data: bytes, pts: int, end: int) -> None:
        """One ADTS frame: queued behind video, or (audio only) written, cutting on time."""
        if self._video:
            self._pending.append((data, pts, end))
            return
        seg = self.open
        if seg is not None and end - seg.start > self.seg_ticks:
            self.finish(pts)
            seg = None
        if seg is None:
            seg = self.start(pts, self.next_discontinuity)
        seg.writer.write("audio", data, pts)
        seg.end = max(seg.end, end)

    def flush_audio(self, limit: int | None) -> None:
        """Write queued audio with PTS below ``limit`` (all when None) to the open segment."""
        pending = self._pending
        while pending and (limit is None or pending[0][1] < limit) and self.open is not None:
            data, pts, end = pending.popleft()
            self.open.writer.write("audio", data, pts)
            self.open.end = max(self.open.end, end)

    def cut(self) -> None:
        """End the open segment at its end; the next one follows #EXT-X-DISCONTINUITY."""
        if self.open is not None:
            end = self.open.end
            self.flush_audio(end)
            self.finish(end)
        self.next_discontinuity = True

    def close(self) -> SegmentInfo | None:
        """Write what is queued, close the last segment, end the playlist (#EXT-X-ENDLIST)."""
        self.flush_audio(None)
        if self.open is None:
            self.end_playlist()
            return None
        return self.finish(self.open.end, final=True)
