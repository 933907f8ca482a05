"""The SRTP sender of one WHEP viewer: RTP payloads in, SRTP datagrams out, synchronously.

The mirror of :mod:`cloudrec.rtp.receiver` (the "lean send path" in settings and logs means
this module): aiortc negotiates, connects and does the DTLS handshake; then each frame of the
viewer's publication comes here as its RTP payloads (built once per frame for all the viewers
of a publication, :mod:`cloudrec.rtp.packetize`). Per packet: a 12-byte header written with
``struct`` (this viewer's SSRC, sequence number, timestamp and payload type), libsrtp protect
with the viewer's own SRTP session, ``sendto`` on the nominated ICE pair's socket. No queue,
no task, no coroutine per packet.

What the viewer sends back (SRTCP, every datagram of the connection, through the same
``datagram_received`` hook as the receive path) is read here:

- a generic NACK (RFC 4585) is answered from the stream's packet cache (the last
  ``CACHE_SIZE`` packets, none older than ``CACHE_S``): in RTX (RFC 4588: the RTX payload
  type and SSRC of the answer, the original sequence number before the payload) where RTX was
  negotiated, else the packet again as it was;
- a PLI or FIR calls ``on_keyframe_request`` (the viewer sends it upstream, rate-limited);
- receiver reports and the rest are not used.

Sender reports (with an SDES CNAME) go out about once a second per stream that has sent: the
NTP time now and the RTP timestamp now, extrapolated from the last frame's timestamp and its
arrival on the monotonic clock, so audio and video of one viewer map to one timeline (a
browser's lip sync). Datagrams go back to where the viewer's last authentic packet came from,
or, before any came, to the nominated pair's remote address.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
import time
from collections.abc import Callable
from typing import Any

import pylibsrtp

__all__ = ["CACHE_S", "CACHE_SIZE", "LeanSender", "SendStream"]

logger = logging.getLogger(__name__)

CACHE_SIZE = 1024  # packets kept per stream for retransmission (a power of two)
# A NACK for a packet sent longer ago than this is not answered. Not 1 s: a receiver whose
# retransmission was lost too may ask again only at its next new gap (aiortc's does), which
# on a stream of a few dozen packets a second comes a second or more later.
CACHE_S = 2.0
_MASK = CACHE_SIZE - 1
_NTP_EPOCH = 2_208_988_800  # seconds from 1900 to 1970

_RTP = struct.Struct("!BBHII").pack
_RTX_HEAD = struct.Struct("!BBHIIH").pack
_SR = struct.Struct("!BBHIIIIII").pack
_FB = struct.Struct("!BBHII").unpack_from
_NACK_ITEM = struct.Struct("!HH").unpack_from
RTCP_SR, RTCP_SDES, RTCP_RTPFB, RTCP_PSFB = 200, 202, 205, 206

Route = Callable[[], "tuple[Callable[[bytes, Any], None], Any] | None"]
Sessions = Callable[[], tuple[Any, Any]]


class SendStream:
    """One sent stream (a kind) of one viewer: its header fields, counters and cache."""

    __slots__ = ("kind", "ssrc", "payload_type", "clock_rate", "rtx_ssrc", "rtx_payload_type",
                 "seq", "rtx_seq", "origin", "marker", "packets", "octets", "last_ts",
                 "last_at", "cache", "retransmitted", "unanswered")

    def __init__(self, kind: str, ssrc: int, payload_type: int, clock_rate: int,
                 rtx_ssrc: int | None = None, rtx_payload_type: int | None = None) -> None:
        self.kind, self.ssrc, self.clock_rate = kind, ssrc, clock_rate
        self.payload_type = payload_type
        self.rtx_ssrc, self.rtx_payload_type = rtx_ssrc, rtx_payload_type
        self.seq = random.getrandbits(15)
        self.rtx_seq = random.getrandbits(15)
        self.origin = random.getrandbits(32)
        self.marker = 0x80 if kind == "video" else 0
        self.packets = self.octets = 0
        self.last_ts = -1  # the last frame's RTP timestamp (origin added); -1: nothing sent
        self.last_at = 0.0  # and its arrival (time.monotonic())
        # (seq, sent at, marker | payload type, timestamp, payload): the payload is the one
        # every viewer of the frame shares, so a viewer's cache holds no copy of it
        self.cache: list[tuple[int, float, int, int, bytes] | None] = [None] * CACHE_SIZE
        self.retransmitted = 0
        self.unanswered = 0  # NACKed packets no longer (or never) in the cache


class LeanSender:
    """One viewer connection's RTP out and RTCP in."""

    def __init__(self, cname: str, on_keyframe_request: Callable[[], None]) -> None:
        self.cname = cname.encode()
        self.on_keyframe_request = on_keyframe_request
        self.closed = False
        self.streams: dict[str, SendStream] = {}
        self._by_ssrc: dict[int, SendStream] = {}
        self._sessions: Sessions | None = None
        self._route: Route | None = None
        self._rx: Any = None
        self._tx: Any = None
        self._sendto: Callable[[bytes, Any], None] | None = None
        self._addr: Any = None
        self._timer: asyncio.TimerHandle | None = None
        self._failed = False
        self.nacks = 0

    # -- wiring --------------------------------------------------------------------------------

    def port(self, sessions: Sessions) -> Callable[[bytes, float, Any, Any], bool]:
        """The datagram handler of the connection's DTLS transport (given how to read its
        SRTP sessions)."""
        self._sessions = sessions
        return self._on_datagram

    def set_route(self, route: Route) -> None:
        """Where to send before the viewer sent anything: ``route()`` gives ``(sendto,
        address)`` of the nominated ICE pair, or None."""
        self._route = route

    def add_stream(self, stream: SendStream) -> None:
        self.streams[stream.kind] = stream
        self._by_ssrc[stream.ssrc] = stream

    def start(self) -> None:
        if self._timer is None and not self.closed:
            self._timer = asyncio.get_running_loop().call_later(0.3, self._tick)

    def close(self) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _ready(self) -> bool:
        if self._tx is None:
            if self._sessions is None:
                return False
            self._rx, self._tx = self._sessions()
            if self._tx is None:
                return False
        if self._sendto is None:
            route = self._route() if self._route is not None else None
            if route is None:
                return False
            self._sendto, self._addr = route
        return True

    # -- RTP out -------------------------------------------------------------------------------

    def send_frame(self, kind: str, payloads: list[bytes], timestamp: int,
                   arrival: float) -> bool:
        """Send one frame's payloads with RTP timestamp ``timestamp`` (the viewer's clock);
        False when nothing could be sent (no keys or no route yet, or closed)."""
        stream = self.streams.get(kind)
        if stream is None or self.closed or (self._sendto is None or self._tx is None) \
                and not self._ready():
            return False
        ts = (timestamp + stream.origin) & 0xFFFFFFFF
        stream.last_ts, stream.last_at = ts, arrival
        now = time.monotonic()
        ssrc, pt, cache, transmit = stream.ssrc, stream.payload_type, stream.cache, self.transmit
        last = len(payloads) - 1
        seq = stream.seq
        octets = 0
        try:
            for i, payload in enumerate(payloads):
                b1 = pt | stream.marker if i == last else pt
                cache[seq & _MASK] = (seq, now, b1, ts, payload)
                transmit(_RTP(0x80, b1, seq, ts, ssrc) + payload)
                seq = (seq + 1) & 0xFFFF
                octets += len(payload)
        except Exception as exc:
            self._fail(exc)
        stream.seq = seq
        stream.packets += len(payloads)
        stream.octets += octets
        return True

    def transmit(self, packet: bytes) -> None:
        """Protect one RTP packet and send it."""
        self._sendto(self._tx.protect(packet), self._addr)  # type: ignore[misc]

    def _fail(self, exc: Exception) -> None:
        if isinstance(exc, (OSError, pylibsrtp.Error, AttributeError)):
            logger.debug("RTP not sent: %r", exc)  # a closed socket: the connection is going
        elif not self._failed:
            self._failed = True
            logger.exception("lean send path failed on a packet")

    def _retransmit(self, stream: SendStream, seq: int, now: float) -> None:
        entry = stream.cache[seq & _MASK]
        if entry is None or entry[0] != seq or now - entry[1] > CACHE_S:
            stream.unanswered += 1
            return
        _, _, b1, ts, payload = entry
        if stream.rtx_payload_type is not None and stream.rtx_ssrc is not None:
            packet = _RTX_HEAD(0x80, (b1 & 0x80) | stream.rtx_payload_type, stream.rtx_seq, ts,
                               stream.rtx_ssrc, seq) + payload
            stream.rtx_seq = (stream.rtx_seq + 1) & 0xFFFF
        else:
            packet = _RTP(0x80, b1, seq, ts, stream.ssrc) + payload
        stream.retransmitted += 1
        self.transmit(packet)

    # -- RTCP in -------------------------------------------------------------------------------

    def _on_datagram(self, data: bytes, now: float, sendto: Callable[[bytes, Any], None],
                     addr: Any) -> bool:
        if self.closed or len(data) < 8 or not 192 <= data[1] <= 223:
            return True  # a viewer sends no media; RTP from it is dropped
        if self._rx is None:
            if self._sessions is None:
                return True
            self._rx, self._tx = self._sessions()
            if self._rx is None:
                return True
        try:
            data = self._rx.unprotect_rtcp(data)
        except pylibsrtp.Error:
            return True  # a replay or a forgery
        self._sendto, self._addr = sendto, addr  # answer the way the viewer sends from now
        try:
            self._on_rtcp(data, now)
        except Exception as exc:
            self._fail(exc)
        return True

    def _on_rtcp(self, data: bytes, now: float) -> None:
        pos, end = 0, len(data)
        keyframe = False
        while pos + 12 <= end:
            b0, pt, length, _, media_ssrc = _FB(data, pos)
            stop = min(end, pos + (length + 1) * 4)
            fmt = b0 & 0x1F
            if pt == RTCP_RTPFB and fmt == 1:
                stream = self._by_ssrc.get(media_ssrc)
                if stream is not None:
                    self.nacks += 1
                    mono = time.monotonic()
                    for item in range(pos + 12, stop - 3, 4):
                        pid, blp = _NACK_ITEM(data, item)
                        self._retransmit(stream, pid, mono)
                        bit = 0
                        while blp:
                            if blp & 1:
                                self._retransmit(stream, (pid + bit + 1) & 0xFFFF, mono)
                            blp >>= 1
                            bit += 1
            elif pt == RTCP_PSFB and fmt in (1, 4):
                keyframe = True
            pos = stop
        if keyframe:
            self.on_keyframe_request()

    # -- RTCP out ------------------------------------------------------------------------------

    def sender_report(self, stream: SendStream, wall: float, mono: float) -> bytes:
        """A sender report and an SDES CNAME for ``stream`` (one compound packet)."""
        ntp = wall + _NTP_EPOCH
        msw = int(ntp)
        lsw = int((ntp - msw) * 4294967296.0) & 0xFFFFFFFF
        rtp_now = (stream.last_ts + round((mono - stream.last_at) * stream.clock_rate)) \
            & 0xFFFFFFFF
        report = _SR(0x80, RTCP_SR, 6, stream.ssrc, msw & 0xFFFFFFFF, lsw, rtp_now,
                     stream.packets & 0xFFFFFFFF, stream.octets & 0xFFFFFFFF)
        item = bytes((1, len(self.cname))) + self.cname
        chunk = struct.pack("!I", stream.ssrc) + item
        chunk += b"\x00" * (4 - len(chunk) % 4)  # the terminating null item and padding
        sdes = struct.pack("!BBH", 0x81, RTCP_SDES, len(chunk) // 4) + chunk
        return report + sdes

    def _tick(self) -> None:
        self._timer = None
        if self.closed:
            return
        if self._ready():
            wall, mono = time.time(), time.monotonic()
            for stream in self.streams.values():
                if stream.last_ts < 0:
                    continue
                try:
                    self._sendto(self._tx.protect_rtcp(  # type: ignore[misc]
                        self.sender_report(stream, wall, mono)), self._addr)
                except Exception as exc:
                    self._fail(exc)
        self._timer = asyncio.get_running_loop().call_later(0.75 + 0.5 * random.random(),
                                                            self._tick)
