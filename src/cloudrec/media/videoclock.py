"""A source recording's video timeline: RTP 90 kHz timestamps → recording ticks, with pauses and
new epochs told apart (see the timeline in :mod:`cloudrec.media.source`)."""

from __future__ import annotations

from collections.abc import Callable

from cloudrec.media.hls import TS_CLOCK
from cloudrec.mediatypes import EncodedFrame


class VideoClock:
    """RTP 90 kHz → recording ticks for one video track, with pause and epoch detection."""

    def __init__(self, pause_s: float) -> None:
        self.pause_s = pause_s
        self.epoch: int | None = None
        self.anchor_rtp = self.anchor_pts = self.last_rtp = 0
        self.last_arrival = 0.0
        self.last_pts: int | None = None
        self.interval = TS_CLOCK // 30  # last frame spacing, to time a segment's end
        self.rebase = False  # re-anchor the next frame on arrival (after pauserecord)

    def place(
        self, frame: EncodedFrame, to_ticks: Callable[[float], int], when: float
    ) -> tuple[int, str | None] | None:
        """(pts, break reason: None, "pause" or "epoch"), or None for a stale duplicate."""
        rate = frame.clock_rate or TS_CLOCK
        brk = None
        if self.epoch is not None:
            if frame.epoch != self.epoch:
                brk = "epoch"
            elif self.rebase:
                brk = "pause"
            else:
                step = frame.timestamp - self.last_rtp
                if step <= 0:
                    return None
                if step > self.pause_s * rate or frame.arrival - self.last_arrival > self.pause_s:
                    brk = "pause"
        if self.last_pts is None or brk is not None:
            pts = to_ticks(when)
            if self.last_pts is not None:
                pts = max(pts, self.last_pts + self.interval)
            self.anchor_rtp, self.anchor_pts = frame.timestamp, pts
        else:
            pts = self.anchor_pts + (frame.timestamp - self.anchor_rtp) * TS_CLOCK // rate
            self.interval = min(max(pts - self.last_pts, TS_CLOCK // 100), TS_CLOCK // 5)
        self.epoch, self.last_rtp, self.last_arrival = frame.epoch, frame.timestamp, frame.arrival
        self.last_pts = pts
        self.rebase = False
        return pts, brk
