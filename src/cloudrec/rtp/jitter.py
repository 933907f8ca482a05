"""Ordering and loss recovery of received RTP streams, as a recorder needs them: statistics
for receiver reports, Opus packets passed through in order, and video packets assembled into
whole frames with NACK recovery.

Per packet the work is: a sequence-number unwrap, two counters, a jitter update when the RTP
timestamp changes, and (video) one dict insert and a scan that advances over what is complete.
A frame's bytes are joined once, when its last packet is in. Nothing is sorted, parsed or
allocated per packet beyond the payload slice.

Video (:class:`VideoStream`): packets are kept by extended sequence number; a frame is the run
from the packet after the previous frame's last one up to a packet with the marker bit, and is
emitted as soon as that run has no hole, so frames leave in order. A hole is NACKed at once
and again every ``1.5 × `` the measured NACK round trip (at least 20 ms) for up to 10 times or
1 s (aiortc's sender keeps 128 packets, about a second of video); then the frame is given up:
frames are dropped up to the next keyframe, which is asked for with a PLI. The stream starts in
waiting for a frame boundary too, unless its first packet visibly begins a frame.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["AudioStream", "RxStats", "TimestampUnwrap", "VideoStream"]

# (data, unwrapped timestamp) -> None
Deliver = Callable[[bytes, int], None]

NACK_TRIES = 10
NACK_GIVE_UP_S = 1.0
NACK_MIN_INTERVAL_S = 0.02
MAX_GAP = 512  # a larger jump in sequence numbers is a restart, not a loss


class RxStats:
    """RFC 3550 receiver statistics of one SSRC (A.3 loss, A.8 jitter)."""

    __slots__ = ("clock_rate", "base", "highest", "received", "_expected_prior",
                 "_received_prior", "jitter", "_last_ts", "_last_transit", "lsr", "lsr_at")

    def __init__(self, clock_rate: int) -> None:
        self.clock_rate = clock_rate
        self.base = -1
        self.highest = -1
        self.received = 0
        self._expected_prior = 0
        self._received_prior = 0
        self.jitter = 0.0
        self._last_ts = -1
        self._last_transit = 0
        self.lsr = 0
        self.lsr_at = 0.0

    def add(self, seq: int, ts: int, now: float) -> int:
        """Count one packet; returns its extended sequence number."""
        highest = self.highest
        if highest < 0:
            self.base = self.highest = ext = seq
        else:
            delta = (seq - highest) & 0xFFFF
            ext = highest + delta if delta < 0x8000 else highest + delta - 0x10000
            if ext > highest:
                self.highest = ext
        self.received += 1
        if ts != self._last_ts:
            transit = int(now * self.clock_rate) - ts
            if self._last_ts >= 0:
                d = (transit - self._last_transit + 0x80000000) % 0x100000000 - 0x80000000
                self.jitter += (abs(d) - self.jitter) / 16.0
            self._last_ts = ts
            self._last_transit = transit
        return ext

    def block(self, ssrc: int, now: float) -> tuple[int, int, int, int, int, int, int]:
        """A report block ``(ssrc, fraction, lost, highest, jitter, lsr, dlsr)``."""
        expected = self.highest - self.base + 1
        expected_interval = expected - self._expected_prior
        received_interval = self.received - self._received_prior
        self._expected_prior, self._received_prior = expected, self.received
        lost_interval = expected_interval - received_interval
        fraction = (lost_interval << 8) // expected_interval if (
            expected_interval > 0 and lost_interval > 0) else 0
        dlsr = int((now - self.lsr_at) * 65536) if self.lsr else 0
        return (ssrc, min(fraction, 255), expected - self.received, self.highest,
                int(self.jitter), self.lsr, dlsr & 0xFFFFFFFF)


class TimestampUnwrap:
    """RTP timestamps unwrapped across 32 bits and counted from the first one (as aiortc's
    ``TimestampMapper``, but tolerant of a small step back)."""

    __slots__ = ("_origin", "_last")

    def __init__(self) -> None:
        self._origin = -1
        self._last = 0

    def __call__(self, ts: int) -> int:
        if self._origin < 0:
            self._origin = self._last = ts
            return 0
        d = (ts - self._last + 0x80000000) % 0x100000000 - 0x80000000
        self._last += d
        return self._last - self._origin

    def peek(self, ts: int) -> int | None:
        """What ``ts`` would unwrap to now (the nearer way round 32 bits), without taking it;
        None before the first timestamp."""
        if self._origin < 0:
            return None
        return self._last + (ts - self._last + 0x80000000) % 0x100000000 - 0x80000000 \
            - self._origin


class AudioStream:
    """Opus: each packet is a frame, passed on in order; a late or repeated one is dropped
    (the decoder's concealment covers it), so no jitter buffer holds packets back."""

    __slots__ = ("ssrc", "stats", "_last", "_map", "_deliver")

    kind = "audio"

    def __init__(self, ssrc: int, clock_rate: int, deliver: Deliver) -> None:
        self.ssrc = ssrc
        self.stats = RxStats(clock_rate)
        self._last = -1
        self._map = TimestampUnwrap()
        self._deliver = deliver

    def peek_timestamp(self, ts: int) -> int | None:
        """The timestamp a frame with RTP time ``ts`` is given (None before the first)."""
        return self._map.peek(ts)

    def packet(self, seq: int, ts: int, marker: int, payload: bytes, now: float) -> None:
        ext = self.stats.add(seq, ts, now)
        if ext <= self._last:
            return
        self._last = ext
        self._deliver(payload, self._map(ts))


class VideoStream:
    """Frames out of packets, in order, holes NACKed (see the module docstring)."""

    __slots__ = ("ssrc", "stats", "_piece", "_starts", "_is_key", "_deliver", "_nack", "_pli",
                 "_store", "_next", "_scan", "_missing", "_next_check", "_rtt", "_need_key",
                 "_map", "_now", "_pli_at", "frames", "frames_dropped", "recovered", "lost")

    kind = "video"

    def __init__(self, ssrc: int, clock_rate: int, piece: Callable[[bytes], bytes],
                 is_key: Callable[[bytes], bool], deliver: Deliver,
                 send_nack: Callable[[int, list[int]], None],
                 send_pli: Callable[[int], None],
                 starts_frame: Callable[[bytes], bool] | None = None) -> None:
        self.ssrc = ssrc
        self._starts = starts_frame
        self.stats = RxStats(clock_rate)
        self._piece = piece
        self._is_key = is_key
        self._deliver = deliver
        self._nack = send_nack
        self._pli = send_pli
        self._store: dict[int, tuple[int, int, bytes]] = {}  # ext seq -> (ts, marker, piece)
        self._next = -1  # first packet of the next frame; -1: waiting for a frame boundary
        self._scan = -1  # first packet not yet in (from _next on)
        self._missing: dict[int, list[float]] = {}  # ext seq -> [first, last asked, tries]
        self._next_check = 0.0
        self._rtt = 0.05
        self._need_key = False  # the recorder waits for a keyframe itself at the start
        self._map = TimestampUnwrap()
        self._now = 0.0
        self._pli_at = -1.0
        self.frames = 0
        self.frames_dropped = 0
        self.recovered = 0
        self.lost = 0

    # -- per packet ----------------------------------------------------------------------------

    def peek_timestamp(self, ts: int) -> int | None:
        """The timestamp a frame with RTP time ``ts`` is given (None before the first)."""
        return self._map.peek(ts)

    def packet(self, seq: int, ts: int, marker: int, payload: bytes, now: float) -> None:
        """A packet sent on the media SSRC (counted in the receiver report)."""
        highest = self.stats.highest
        ext = self.stats.add(seq, ts, now)
        if highest >= 0 and ext > highest + 1:
            if ext - highest > MAX_GAP:
                self._restart(ext)
            else:
                self._lost_between(highest + 1, ext, now)
        self._insert(ext, ts, marker, payload, now)

    def retransmission(self, seq: int, ts: int, marker: int, payload: bytes, now: float) -> None:
        """A packet recovered through RTX (``seq`` is the original sequence number)."""
        highest = self.stats.highest
        if highest < 0:
            return
        delta = (seq - highest) & 0xFFFF
        ext = highest + delta if delta < 0x8000 else highest + delta - 0x10000
        if ext > highest:  # ahead of everything: treat as a first arrival
            self.packet(seq, ts, marker, payload, now)
            return
        self._insert(ext, ts, marker, payload, now)

    def _insert(self, ext: int, ts: int, marker: int, payload: bytes, now: float) -> None:
        self._now = now
        missing = self._missing
        if missing:
            asked = missing.pop(ext, None)
            if asked is not None:
                self.recovered += 1
                self._rtt += (max(now - asked[1], 0.001) - self._rtt) / 8.0
            if missing and now >= self._next_check:
                self._check_missing(now)
        if self._next < 0:  # waiting for a frame boundary: the packet after a marker
            if self.stats.received == 1 and self._starts is not None and self._starts(payload):
                self._next = self._scan = ext  # the very first packet begins a frame
            elif marker:
                self._drop_through(ext)
                self._next = self._scan = ext + 1
                return
            else:
                return
        if ext < self._next or ext in self._store:
            return  # late or duplicate
        self._store[ext] = (ts, marker, self._piece(payload))
        if ext == self._scan:
            self._advance()

    def _advance(self) -> None:
        store = self._store
        s = self._scan
        while s in store:
            if store[s][1]:
                self._emit(self._next, s)
                self._next = s + 1
            s += 1
        self._scan = s

    def _emit(self, first: int, last: int) -> None:
        store = self._store
        packets = [store.pop(i) for i in range(first, last + 1)]
        ts = packets[-1][0]
        if packets[0][0] != ts:  # a sender that left out a marker: the frame is the last run
            packets = [p for p in packets if p[0] == ts]
        data = b"".join([p[2] for p in packets])
        if not data:
            return
        if self._need_key:
            if not self._is_key(data):
                self.frames_dropped += 1
                if self._now - self._pli_at >= 0.5:  # the PLI (or the keyframe) was lost
                    self._pli_at = self._now
                    self._pli(self.ssrc)
                return
            self._need_key = False
        self.frames += 1
        self._deliver(data, self._map(ts))

    # -- loss ----------------------------------------------------------------------------------

    def _lost_between(self, first: int, end: int, now: float) -> None:
        missing = self._missing
        for ext in range(first, end):
            missing[ext] = [now, now, 1]
        self._nack(self.ssrc, list(range(first, end)))
        if len(missing) == end - first:
            self._next_check = now + max(NACK_MIN_INTERVAL_S, 1.5 * self._rtt)

    def _check_missing(self, now: float) -> None:
        """Ask again for what is still missing; give up on what is too old."""
        again = []
        given_up = -1
        interval = max(NACK_MIN_INTERVAL_S, 1.5 * self._rtt)
        for ext, asked in self._missing.items():
            if now - asked[0] > NACK_GIVE_UP_S or asked[2] >= NACK_TRIES:
                given_up = max(given_up, ext)
            elif now - asked[1] >= interval:
                asked[1] = now
                asked[2] += 1
                again.append(ext)
        if again:
            self._nack(self.ssrc, again)
        if given_up >= 0:
            self._give_up(given_up)
        self._next_check = now + interval

    def _give_up(self, ext: int) -> None:
        """Packets up to ``ext`` will not come: resume at the next frame boundary, keyframe."""
        self.lost += sum(1 for m in self._missing if m <= ext)
        self._missing = {m: a for m, a in self._missing.items() if m > ext}
        boundary = next((s for s in sorted(self._store) if s >= ext and self._store[s][1]), -1)
        if boundary >= 0:
            self._drop_through(boundary)
            self._next = self._scan = boundary + 1
            self._resync()
            self._advance()
        else:
            self._drop_through(ext)
            self._next = self._scan = -1
            self._resync()

    def _restart(self, ext: int) -> None:
        self._missing.clear()
        self._store.clear()
        self._next = self._scan = -1
        self._resync()

    def _resync(self) -> None:
        if not self._need_key:
            self._need_key = True
            self._pli_at = self._now
            self._pli(self.ssrc)

    def _drop_through(self, ext: int) -> None:
        store = self._store
        for s in [s for s in store if s <= ext]:
            del store[s]
        if self._missing:
            self._missing = {m: a for m, a in self._missing.items() if m > ext}
