"""The RTCP a receive-only recorder sends, and the little it reads (RFC 3550, 4585, REMB draft).

Built as bytes with ``struct``: a receiver report, a PLI, a FIR, a generic NACK and a REMB are a
few fixed fields each, and a recorder sends a handful per second per publication, so no packet
objects are made. Of what a publisher sends, only the sender report's NTP and RTP times are
read: the NTP time for the receiver report's LSR/DLSR (from which the publisher computes its
round-trip time), both for the sender's clock (the wall-clock time of an RTP timestamp, which
puts the publisher's audio and video on one clock).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

__all__ = ["ReportBlock", "SenderReport", "fir", "is_rtcp", "nack", "pli", "receiver_report",
           "remb", "SenderClocks", "sender_reports", "sender_times"]

RTCP_SR, RTCP_RR, RTCP_RTPFB, RTCP_PSFB = 200, 201, 205, 206
_FMT_NACK, _FMT_PLI, _FMT_FIR, _FMT_REMB = 1, 1, 4, 15
NTP_TO_UNIX = 2_208_988_800  # seconds from 1900-01-01 (NTP's epoch) to 1970-01-01


class SenderReport(NamedTuple):
    ssrc: int
    lsr: int  # the middle 32 bits of the NTP time, echoed in receiver reports
    wallclock: float  # the NTP time, seconds since the Unix epoch (the sender's clock)
    rtp_timestamp: int  # the same instant on the stream's RTP clock (32 bits, not unwrapped)


def is_rtcp(data: bytes) -> bool:
    """RTCP and RTP on one port (RFC 5761): RTCP packet types 192-223 sit where RTP has the
    marker bit and payload types 64-95, which WebRTC never negotiates."""
    return len(data) >= 2 and 192 <= data[1] <= 223


ReportBlock = tuple[int, int, int, int, int, int, int]
# (ssrc, fraction_lost 0-255, cumulative lost, extended highest seq, jitter, lsr, dlsr)


def receiver_report(sender_ssrc: int, blocks: Iterable[ReportBlock]) -> bytes:
    body = b"".join(
        struct.pack("!IIIIII", ssrc, (fraction << 24) | (max(-0x800000, min(lost, 0x7FFFFF))
                                                          & 0xFFFFFF),
                    highest & 0xFFFFFFFF, jitter & 0xFFFFFFFF, lsr, dlsr)
        for ssrc, fraction, lost, highest, jitter, lsr, dlsr in blocks)
    count = len(body) // 24
    return struct.pack("!BBHI", 0x80 | count, RTCP_RR, 1 + len(body) // 4, sender_ssrc) + body


def pli(sender_ssrc: int, media_ssrc: int) -> bytes:
    return struct.pack("!BBHII", 0x80 | _FMT_PLI, RTCP_PSFB, 2, sender_ssrc, media_ssrc)


def fir(sender_ssrc: int, media_ssrc: int, seq: int) -> bytes:
    """Full Intra Request (RFC 5104 4.3.1): PSFB fmt 4 with one FCI entry naming ``media_ssrc``
    and the request's sequence number (a new request counts up).

    RFC 5104 leaves the header's media source field unused ("SHALL be set to 0"); it carries
    ``media_ssrc`` here too, since some stacks (aiortc among them) route feedback by that field
    alone and would drop a FIR with 0 there, while the RFC's receivers ignore it."""
    return struct.pack("!BBHIIIB3x", 0x80 | _FMT_FIR, RTCP_PSFB, 4, sender_ssrc, media_ssrc,
                       media_ssrc, seq & 0xFF)


def nack(sender_ssrc: int, media_ssrc: int, lost: Iterable[int]) -> bytes:
    """A generic NACK (RFC 4585 6.2.1) for 16-bit sequence numbers, packed as PID + bitmask."""
    fci = []
    pid = -1
    mask = 0
    for seq in sorted(s & 0xFFFF for s in lost):
        if pid >= 0 and 0 < (seq - pid) & 0xFFFF <= 16:
            mask |= 1 << (((seq - pid) & 0xFFFF) - 1)
            continue
        if pid >= 0:
            fci.append(struct.pack("!HH", pid, mask))
        pid, mask = seq, 0
    if pid >= 0:
        fci.append(struct.pack("!HH", pid, mask))
    body = b"".join(fci)
    return struct.pack("!BBHII", 0x80 | _FMT_NACK, RTCP_RTPFB, 2 + len(body) // 4, sender_ssrc,
                       media_ssrc) + body


def remb(sender_ssrc: int, bitrate: int, ssrcs: list[int]) -> bytes:
    """Receiver Estimated Maximum Bitrate (draft-alvestrand-rmcat-remb): PSFB fmt 15."""
    bitrate = max(0, int(bitrate))
    exp = 0
    while bitrate >= 1 << 18:
        bitrate >>= 1
        exp += 1
    fci = (b"REMB" + struct.pack("!BBH", len(ssrcs), (exp << 2) | (bitrate >> 16),
                                 bitrate & 0xFFFF)
           + b"".join(struct.pack("!I", s) for s in ssrcs))
    return struct.pack("!BBHII", 0x80 | _FMT_REMB, RTCP_PSFB, 2 + len(fci) // 4, sender_ssrc,
                       0) + fci


def sender_times(data: bytes) -> Iterator[SenderReport]:
    """Each sender report of a compound RTCP packet (RFC 3550 6.4.1); the rest is skipped."""
    pos, end = 0, len(data)
    while pos + 8 <= end:
        length = (int.from_bytes(data[pos + 2:pos + 4], "big") + 1) * 4
        if data[pos + 1] == RTCP_SR and pos + 20 <= end:
            ssrc, msw, lsw, rtp_ts = struct.unpack_from("!IIII", data, pos + 4)
            yield SenderReport(ssrc, ((msw & 0xFFFF) << 16) | (lsw >> 16),
                               msw - NTP_TO_UNIX + lsw / 4294967296.0, rtp_ts)
        pos += length


def sender_reports(data: bytes) -> Iterator[tuple[int, int]]:
    """``(ssrc, lsr)`` of each sender report in a compound RTCP packet; the rest is skipped."""
    for report in sender_times(data):
        yield report.ssrc, report.lsr


class SenderClocks:
    """The last sender report ``(wall clock, RTP time)`` of each SSRC, and from it the
    wall-clock time of a stream's timestamp 0.

    That time is the least any report gave, allowed to rise by ``DRIFT`` per second of the
    sender's clock: some senders (aiortc) take a report's NTP time when they send the packet,
    not when it was captured, so a report made while the sender ran late says the media was
    captured later than it was; a sender whose NTP clock runs ahead of its RTP clock is still
    followed (and one that runs behind at once)."""

    __slots__ = ("last", "_least")

    DRIFT = 0.001

    def __init__(self) -> None:
        self.last: dict[int, tuple[float, int]] = {}
        self._least: dict[int, tuple[float, float]] = {}  # SSRC: (time of 0, report's time)

    def wall0(self, ssrc: int, unwrap: Callable[[int], int | None],
              clock_rate: int) -> float | None:
        """``unwrap(rtp)``: the stream's timestamp for an RTP time (None before its first
        frame). None when there is no report for ``ssrc`` or no frame yet."""
        report = self.last.get(ssrc)
        if report is None:
            return None
        at = unwrap(report[1])
        if at is None:
            return None
        wall0 = report[0] - at / clock_rate
        least = self._least.get(ssrc)
        if least is not None:
            wall0 = min(wall0, least[0] + self.DRIFT * max(0.0, report[0] - least[1]))
        self._least[ssrc] = (wall0, report[0])
        return wall0
