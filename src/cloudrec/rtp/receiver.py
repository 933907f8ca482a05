"""The SRTP receiver: one connection's SRTP/SRTCP datagrams in, whole encoded frames out.

The same receiver takes plain RTP/RTCP (an SFU's RTP forward, :mod:`cloudrec.ingress.janus`)
through :meth:`LeanReceiver.plain_port`: the SRTP port is not involved, the rest is shared.

It does only what a recorder needs, on the ICE, DTLS and SRTP keys that aiortc negotiated
(:mod:`cloudrec.webrtc`); the name "lean receive path" in settings and logs means this module.

Where aiortc 1.16's receive CPU goes (py-spy, 200 Hz, 20 s, one server process receiving 16
publishers of the pre-encoded 640×480@15 ~1 Mbps H.264 + mono Opus clip on this 2-core box; the
share of all samples, 23 % of which were the idle ``epoll`` wait):

==========================================================  =======
per packet                                                   share
==========================================================  =======
asyncio: UDP read, ``asyncio.Queue`` hand-offs between        ~19 %
aioice's protocol, its connection and the DTLS task, the
coroutine chain ``_recv_next → _handle_rtp_data →
_handle_rtp_packet`` (awaits per packet)
REMB estimator (``RemoteBitrateEstimator.add``, GCC's         10.6 %
overuse detector in Python on every video packet)
sending RTCP from inside the packet path (REMB on every       7.6 %
estimate change, awaited)
RTP parsing (``RtpPacket.parse``, header-extension map)        6.4 %
jitter buffer (``JitterBuffer.add``/``_remove_frame``)          5.1 %
NACK generator (``truncate`` walks the missing set on          4.6 %
every packet)
H.264 depayload (``H264PayloadDescriptor.parse``)              4.5 %
SRTP unprotect (libsrtp, C)                                    3.5 %
our tap and sink (conformance check, stats, subscriptions)     2.4 %
STUN parse attempt on every media datagram                     1.6 %
``datetime.now`` per packet (``current_datetime``)             1.6 %
RTCP statistics (``StreamStatistics.add``)                     1.4 %
==========================================================  =======

The decoder costs nothing already (the tap keeps frames from it); the cost is Python work per
packet, most of it a recorder does not use, and the hand-offs between tasks. Decision: keep
aiortc for what happens once per connection (SDP, ICE, the DTLS handshake and its SRTP keys)
and take every SRTP/SRTCP datagram synchronously in the UDP protocol's ``datagram_received``
(:func:`cloudrec.webrtc._aiortc_transport.attach_media`), before aioice parses it as STUN or
queues it: unprotect with the DTLS transport's libsrtp session, read the RTP header with one
``struct`` call, and hand the payload to a stream (:mod:`cloudrec.rtp.jitter`). No queue,
no task, no coroutine per packet; RTCP goes out synchronously from a once-a-second timer (RR,
REMB) or when needed (NACK, PLI). A native WebRTC stack would cut further but brings a second
ICE/DTLS implementation to keep compatible with every publisher the interop tests cover.

What is kept: receiver reports (loss, jitter, LSR/DLSR), a keyframe request when one is
needed (PLI; a FIR to a publisher whose codec negotiated ``ccm fir`` but not ``nack pli``, see
:func:`cloudrec.webrtc._aiortc_tap.accept_fir`), NACK with retries for video, REMB
(:mod:`cloudrec.rtp.bwe`), RTX unwrapping, H.264/VP8 depacketisation into whole frames, Opus
passed through, and the sender's clock (:data:`OnSenderClock`, from sender reports).

One publication, one receiver: every SRTP datagram of the connection comes here, whichever of
its sockets and source addresses it arrives on, and none goes to aiortc's receiver. Two
receivers feeding one publication would each count RTP timestamps from the first frame *it*
saw, so a hand-over between them steps the clock back, and a recorder drops everything until
the clock has caught up (seconds of video). Datagrams that arrive before this side has finished
the DTLS handshake (the peer finished first and started sending) are held, up to
``EARLY_LIMIT``, and taken in order once the SRTP keys exist; aiortc's DTLS task would otherwise
hand them to its receiver after the handshake. The tap on aiortc's receiver stays installed
(it keeps aiortc's decoder idle); :mod:`cloudrec.webrtc.session` does not pass its frames on
for a publication on this path.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import pylibsrtp

from cloudrec.media.codecs import keyframe_detector
from cloudrec.media.codecs.h264 import conformant_access_unit
from cloudrec.rtp import rtcp
from cloudrec.rtp.bwe import RembEstimate
from cloudrec.rtp.depacketize import piece_for, starts_frame_for
from cloudrec.rtp.jitter import AudioStream, VideoStream

__all__ = ["CodecInfo", "LeanReceiver", "OnFrame", "OnSenderClock"]

logger = logging.getLogger(__name__)

_HEADER = struct.Struct("!BBHII").unpack_from
EARLY_LIMIT = 256  # datagrams held per transport before its SRTP keys exist (~2 s at 1 Mbps)

# (kind, codec name, clock rate, data, unwrapped RTP timestamp) -> None
OnFrame = Callable[[str, str, int, bytes, int], None]
# (kind, the sender's wall-clock time of that kind's timestamp 0, or None) -> None
OnSenderClock = Callable[[str, float | None], None]
# the srtp sessions (rx, tx) of a DTLS transport, (None, None) before its handshake completes
Sessions = Callable[[], tuple[Any, Any]]


@dataclass(frozen=True)
class CodecInfo:
    """One negotiated payload type."""

    kind: str  # "audio" | "video"
    name: str  # lower case: "h264", "vp8", "opus", "rtx"
    payload_type: int
    clock_rate: int
    apt: int | None = None  # RTX: the payload type it retransmits
    fir: bool = False  # keyframes are asked for with FIR (the codec took ``ccm fir``, no PLI)


class _Slot:
    __slots__ = ("kind", "name", "clock_rate", "fir", "stream", "target", "make", "clocked")

    def __init__(self, kind: str, name: str, clock_rate: int, fir: bool = False) -> None:
        self.kind, self.name, self.clock_rate, self.fir = kind, name, clock_rate, fir
        self.clocked = False  # its stream's sender clock was given out
        self.stream: Any = None
        self.target: _Slot | None = None  # RTX: the media slot
        self.make: Callable[[int], Any] | None = None


class _Port:
    """The receive side of one DTLS transport: called for every SRTP/SRTCP datagram."""

    __slots__ = ("owner", "sessions", "rx", "tx", "send", "addr", "early")

    def __init__(self, owner: LeanReceiver, sessions: Sessions) -> None:
        self.owner = owner
        self.sessions = sessions
        self.rx: Any = None
        self.tx: Any = None
        self.send: Callable[[bytes, Any], None] | None = None
        self.addr: Any = None
        self.early: list[tuple[bytes, float, Callable[[bytes, Any], None], Any]] = []

    def __call__(self, data: bytes, now: float, send: Callable[[bytes, Any], None],
                 addr: Any) -> bool:
        if self.owner.closed:
            return True
        if self.rx is None:
            rx, tx = self.sessions()
            if rx is None:  # the handshake is not done here yet: keep it for the keys
                if len(self.early) < EARLY_LIMIT:
                    self.early.append((data, now, send, addr))
                return True
            self.rx, self.tx = rx, tx
            early, self.early = self.early, []
            for args in early:
                self._take(*args)
        self._take(data, now, send, addr)
        return True

    def _take(self, data: bytes, now: float, send: Callable[[bytes, Any], None],
              addr: Any) -> None:
        owner = self.owner
        rx = self.rx
        try:
            if 192 <= data[1] <= 223:
                data = rx.unprotect_rtcp(data)
                rtp = False
            else:
                data = rx.unprotect(data)
                rtp = True
        except pylibsrtp.Error:
            return  # a replay or a forgery, as aiortc treats it
        # authentic: RTCP goes back the way the peer sends from now
        owner._port = self
        self.send, self.addr = send, addr
        try:
            if rtp:
                owner._on_rtp(data, now)
            else:
                owner._on_rtcp(data, now)
        except Exception:
            if not owner._failed:
                owner._failed = True
                logger.exception("lean receive path failed on a packet")


class _Clear:
    """No SRTP: what goes out is sent as it is."""

    @staticmethod
    def protect_rtcp(packet: bytes) -> bytes:
        return packet


class _PlainPort:
    """The receive side of one unencrypted RTP or RTCP socket (an RTP forward of an SFU). A
    port that ``latches`` becomes the way RTCP goes back, to where its last datagram came from;
    a port made with ``send``/``addr`` is that way from the start."""

    __slots__ = ("owner", "tx", "send", "addr", "latch")

    def __init__(self, owner: LeanReceiver, latch: bool) -> None:
        self.owner = owner
        self.tx = _Clear()
        self.send: Callable[[bytes, Any], None] | None = None
        self.addr: Any = None
        self.latch = latch

    def __call__(self, data: bytes, now: float, send: Callable[[bytes, Any], None],
                 addr: Any) -> bool:
        owner = self.owner
        if owner.closed or len(data) < 2:
            return True
        if self.latch:
            owner._port = self
            self.send, self.addr = send, addr
        try:
            if 192 <= data[1] <= 223:
                owner._on_rtcp(data, now)
            else:
                owner._on_rtp(data, now)
        except Exception:
            if not owner._failed:
                owner._failed = True
                logger.exception("plain RTP receive failed on a packet")
        return True


class LeanReceiver:
    """One publication's media: every datagram of its transports, frames out to ``on_frame``."""

    def __init__(self, codecs: list[CodecInfo], on_frame: OnFrame, *, rtcp_ssrc: int,
                 abs_send_time_id: int | None = None, remb: bool = True,
                 on_sender_clock: OnSenderClock | None = None) -> None:
        self.closed = False
        self._on_sender_clock = on_sender_clock
        self._srs = rtcp.SenderClocks() if on_sender_clock is not None else None
        self._failed = False
        self._rtcp_ssrc = rtcp_ssrc
        self._ast_id = abs_send_time_id or 0
        self._bwe = RembEstimate() if remb and any(c.kind == "video" for c in codecs) else None
        self._port: _Port | _PlainPort | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._slots: dict[int, _Slot] = {}
        self._fir_seq: dict[int, int] = {}  # media SSRC: the last FIR's sequence number
        for codec in codecs:
            if codec.name != "rtx":
                slot = _Slot(codec.kind, codec.name, codec.clock_rate, codec.fir)
                slot.make = self._stream_factory(slot)
                self._slots[codec.payload_type] = slot
        for codec in codecs:
            if codec.name == "rtx" and codec.apt in self._slots:
                slot = _Slot(codec.kind, "rtx", codec.clock_rate)
                slot.target = self._slots[codec.apt]
                self._slots[codec.payload_type] = slot
        self._on_frame = on_frame

    # -- wiring --------------------------------------------------------------------------------

    def port(self, sessions: Sessions) -> _Port:
        """The datagram handler for one DTLS transport (given how to read its SRTP sessions)."""
        return _Port(self, sessions)

    def plain_port(self, *, latch: bool = False, send: Callable[[bytes, Any], None] | None = None,
                   addr: Any = None) -> _PlainPort:
        """The datagram handler for one socket of plain RTP/RTCP (no SRTP). RTCP (receiver
        reports, NACK, PLI/FIR) goes back through ``send`` to ``addr`` when given, or to where
        the datagrams of a ``latch`` port come from."""
        port = _PlainPort(self, latch)
        if send is not None:
            port.send, port.addr = send, addr
            self._port = port
        return port

    def start(self) -> None:
        if self._timer is None and not self.closed:
            self._timer = asyncio.get_running_loop().call_later(0.5, self._tick)

    def close(self) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def request_keyframe(self) -> int:
        """Ask each video stream heard for a keyframe (PLI, or FIR where that is what the
        publisher took); returns how many requests were sent."""
        sent = 0
        for slot in self._slots.values():
            if slot.kind == "video" and slot.stream is not None:
                self._ask_keyframe(slot.fir, slot.stream.ssrc)
                sent += 1
        return sent

    def stats(self) -> dict[str, int]:
        """Video frames delivered and dropped, packets recovered by NACK and given up."""
        out = {"frames": 0, "frames_dropped": 0, "recovered": 0, "lost": 0}
        for slot in self._slots.values():
            stream = slot.stream
            if isinstance(stream, VideoStream):
                out["frames"] += stream.frames
                out["frames_dropped"] += stream.frames_dropped
                out["recovered"] += stream.recovered
                out["lost"] += stream.lost
        return out

    def _stream_factory(self, slot: _Slot) -> Callable[[int], Any]:
        kind, name, clock_rate = slot.kind, slot.name, slot.clock_rate
        on_frame = self._on_frame_of

        if kind == "audio":
            def make_audio(ssrc: int) -> AudioStream:
                return AudioStream(ssrc, clock_rate, on_frame(kind, name, clock_rate))
            return make_audio
        piece = piece_for(name) or (lambda payload: payload)

        def make_video(ssrc: int) -> VideoStream:
            return VideoStream(ssrc, clock_rate, piece, keyframe_detector(name),
                               on_frame(kind, name, clock_rate), self._send_nack,
                               partial(self._ask_keyframe, slot.fir), starts_frame_for(name))
        return make_video

    def _on_frame_of(self, kind: str, name: str, clock_rate: int) -> Callable[[bytes, int], None]:
        h264 = name == "h264"

        def deliver(data: bytes, timestamp: int) -> None:
            if h264:
                data = conformant_access_unit(data)
            self._on_frame(kind, name, clock_rate, data, timestamp)
        return deliver

    # -- per packet ----------------------------------------------------------------------------

    def _on_rtp(self, data: bytes, now: float) -> None:
        size = len(data)
        if size < 12:
            return
        b0, b1, seq, ts, ssrc = _HEADER(data)
        slot = self._slots.get(b1 & 0x7F)
        if slot is None:
            return
        off = 12 + ((b0 & 0x0F) << 2)
        if b0 & 0x10:
            if off + 4 > size:
                return
            ext_end = off + 4 + (((data[off + 2] << 8) | data[off + 3]) << 2)
            if b1 & 0x80 and self._ast_id and self._bwe is not None and slot.kind == "video":
                self._abs_send_time(data, off, ext_end, now)
            off = ext_end
        end = size - data[-1] if b0 & 0x20 else size
        if off > end:
            return
        payload = data[off:end]
        if self._bwe is not None:
            self._bwe.bytes += end - off
        target = slot.target
        if target is not None:  # RTX: the original sequence number, then the payload
            stream = target.stream
            if stream is not None and len(payload) >= 2:
                stream.retransmission((payload[0] << 8) | payload[1], ts, b1 & 0x80,
                                      payload[2:], now)
            return
        stream = slot.stream
        if stream is None or stream.ssrc != ssrc:
            stream = slot.stream = slot.make(ssrc)  # type: ignore[misc]
            if self._on_sender_clock is not None:  # a new stream: timestamps start again at 0
                slot.clocked = False
                self._on_sender_clock(slot.kind, None)
        stream.packet(seq, ts, b1 & 0x80, payload, now)
        if not slot.clocked and self._srs is not None and self._srs.last:
            self._clock(slot)

    def _abs_send_time(self, data: bytes, start: int, end: int, now: float) -> None:
        if data[start] != 0xBE or data[start + 1] != 0xDE:
            return  # only one-byte header extensions (RFC 8285) carry it in WebRTC
        pos, end = start + 4, min(end, len(data))
        while pos < end:
            head = data[pos]
            if head == 0:
                pos += 1
                continue
            ident, length = head >> 4, (head & 0x0F) + 1
            if ident == 15:
                return
            if ident == self._ast_id and length == 3 and pos + 4 <= end:
                value = (data[pos + 1] << 16) | (data[pos + 2] << 8) | data[pos + 3]
                self._bwe.frame_delay(now, value)  # type: ignore[union-attr]
                return
            pos += 1 + length

    def _on_rtcp(self, data: bytes, now: float) -> None:
        for ssrc, lsr, wallclock, rtp_ts in rtcp.sender_times(data):
            if self._srs is not None:
                self._srs.last[ssrc] = (wallclock, rtp_ts)
            for slot in self._slots.values():
                stream = slot.stream
                if stream is not None and stream.ssrc == ssrc:
                    stream.stats.lsr, stream.stats.lsr_at = lsr, now
                    if self._srs is not None:
                        self._clock(slot)

    def _clock(self, slot: _Slot) -> None:
        """The sender's time of ``slot``'s timestamp 0, once its stream has a frame and an SR."""
        assert self._srs is not None and self._on_sender_clock is not None
        stream = slot.stream
        wall0 = self._srs.wall0(stream.ssrc, stream.peek_timestamp, slot.clock_rate)
        if wall0 is not None:
            slot.clocked = True
            self._on_sender_clock(slot.kind, wall0)

    # -- RTCP out ------------------------------------------------------------------------------

    def _send(self, packet: bytes) -> None:
        port = self._port
        if port is None or port.tx is None or port.send is None or self.closed:
            return
        try:
            port.send(port.tx.protect_rtcp(packet), port.addr)
        except Exception as exc:  # a closed socket: the connection is going away
            logger.debug("RTCP not sent: %r", exc)

    def _send_nack(self, ssrc: int, lost: list[int]) -> None:
        self._send(rtcp.nack(self._rtcp_ssrc, ssrc, lost))

    def _ask_keyframe(self, fir: bool, ssrc: int) -> None:
        if fir:  # each request is a new command: its sequence number counts up (RFC 5104)
            seq = self._fir_seq[ssrc] = (self._fir_seq.get(ssrc, -1) + 1) & 0xFF
            self._send(rtcp.fir(self._rtcp_ssrc, ssrc, seq))
        else:
            self._send(rtcp.pli(self._rtcp_ssrc, ssrc))

    def _tick(self) -> None:
        """Receiver reports and the REMB, about once a second (randomised, RFC 3550 6.2)."""
        self._timer = None
        if self.closed:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        blocks = []
        video_fraction = 0
        video_ssrcs = []
        for slot in self._slots.values():
            stream = slot.stream
            if stream is None or stream.stats.highest < 0:
                continue
            block = stream.stats.block(stream.ssrc, now)
            blocks.append(block)
            if slot.kind == "video":
                video_fraction = max(video_fraction, block[1])
                video_ssrcs.append(stream.ssrc)
        if blocks:
            self._send(rtcp.receiver_report(self._rtcp_ssrc, blocks))
        if self._bwe is not None and video_ssrcs:
            bitrate, _ = self._bwe.update(now, video_fraction / 256.0)
            self._send(rtcp.remb(self._rtcp_ssrc, bitrate, video_ssrcs))
        self._timer = loop.call_later(0.75 + 0.5 * random.random(), self._tick)
