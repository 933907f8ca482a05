"""The bandwidth estimate a recorder sends as REMB, computed once per second, not per packet.

A publisher's encoder bitrate is capped by the receiver's REMB (Chrome's congestion control
takes the lower of its loss-based estimate and the REMB). aiortc's ``RemoteBitrateEstimator``
(the inter-arrival overuse detector of GCC) runs in Python on every video packet: 10.6 % of the
receive CPU in the profile of :mod:`cloudrec.rtp.receiver`. A recorder needs what it gives a
sender: room to climb while the path is clean, and a cut when the path queues or loses.

So the estimate follows the received rate, with the delay signal taken once per *frame* (the
abs-send-time of each frame's last packet against its arrival) instead of once per packet:

- clean (loss ≤ 10 %, queueing delay under 50 ms or not growing): ``1.5 ×`` the bitrate
  received over the last interval, so a sender can grow by half each second, and never below
  ``floor_bps`` (a static picture must not leave the sender starved when it moves again);
- congested (loss above 10 %, or the one-way delay above its 10-second minimum by more than
  50 ms and still growing): ``0.85 ×`` the received bitrate, sent at once.

Without abs-send-time (a publisher that does not send it) the loss rule alone applies.
"""

from __future__ import annotations

from collections import deque

__all__ = ["RembEstimate"]

_QUEUE_S = 0.05
_BASELINE_INTERVALS = 10


class RembEstimate:
    __slots__ = ("floor_bps", "ceiling_bps", "bytes", "bitrate", "_mark", "_delay_sum",
                 "_delay_n", "_origin", "_minima", "_last_queue")

    def __init__(self, floor_bps: int = 300_000, ceiling_bps: int = 20_000_000) -> None:
        self.floor_bps = floor_bps
        self.ceiling_bps = ceiling_bps
        self.bytes = 0  # added to by the receiver per packet (payload bytes)
        self.bitrate = 0
        self._mark: float | None = None
        self._delay_sum = 0.0
        self._delay_n = 0
        self._origin: float | None = None
        self._minima: deque[float] = deque(maxlen=_BASELINE_INTERVALS)
        self._last_queue = 0.0

    def frame_delay(self, arrival: float, abs_send_time: int) -> None:
        """One sample per video frame: ``abs_send_time`` is the 6.18 fixed-point seconds (mod
        64) of the RTP header extension, ``arrival`` a monotonic time in seconds."""
        delay = arrival - abs_send_time / 262144.0
        if self._origin is None:
            self._origin = delay
        delay = (delay - self._origin + 32.0) % 64.0 - 32.0  # relative, unwrapped mod 64 s
        self._delay_sum += delay
        self._delay_n += 1

    def update(self, now: float, fraction_lost: float) -> tuple[int, bool]:
        """The estimate for the interval since the last call, and whether it is a cut."""
        if self._mark is None:
            self._mark, self.bytes = now, 0
            self.bitrate = self.floor_bps
            return self.bitrate, False
        elapsed = max(now - self._mark, 1e-3)
        incoming = self.bytes * 8 / elapsed
        self._mark, self.bytes = now, 0
        congested = fraction_lost > 0.10
        if self._delay_n:
            mean = self._delay_sum / self._delay_n
            self._delay_sum, self._delay_n = 0.0, 0
            baseline = min(self._minima, default=mean)
            self._minima.append(mean)
            queue = mean - min(baseline, mean)
            if queue > _QUEUE_S and queue > self._last_queue:
                congested = True
            self._last_queue = queue
        if congested:
            estimate = 0.85 * incoming
        else:
            estimate = 1.5 * incoming
        self.bitrate = int(min(self.ceiling_bps, max(self.floor_bps, estimate)))
        return self.bitrate, congested
