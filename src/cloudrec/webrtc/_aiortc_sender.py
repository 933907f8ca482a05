"""aiortc's sender internals: pre-encoded media out of an RTCRtpSender, and its keyframe
requests.

Written for, and pinned to, **aiortc 1.16.0** (checked at import by
:mod:`cloudrec.webrtc._aiortc_tap`, and by :func:`check_internals`, which
:class:`~cloudrec.webrtc.viewer.WebRtcViewers` runs).

How aiortc 1.16.0 sends media: ``RTCRtpSender._run_rtp`` awaits ``track.recv()``; an
``av.Packet`` (rather than a decoded frame) goes to its codec's ``Encoder.pack``, which
packetises it without encoding (H.264: FU-A/STAP-A; VP8: its payload descriptor; Opus: as it
is) with the packet's ``pts`` in its ``time_base`` as the RTP timestamp (offset by the
sender's random origin). The sender keeps a history of what it sent and answers NACKs from it
(wrapped in RTX when RTX was negotiated); its SSRC and sequence numbers are its own, so they
run on whatever the track yields.

A PLI or FIR from the remote peer calls ``RTCRtpSender._send_keyframe()``, which only sets a
flag for its own encoder: with pre-encoded packets nobody reads it. :func:`on_keyframe_request`
replaces that method on one sender instance with a callback, so the request can go to the
publisher.

The lean send path (:mod:`cloudrec.rtp.sender`) keeps aiortc's sender for the answer only:
:func:`take_over` replaces ``send`` on one sender instance, which aiortc's connection calls
with the negotiated parameters once DTLS is up; the replacement notes them and starts nothing,
so that sender sends neither RTP nor RTCP, and the lean sender uses its SSRCs
(``RTCRtpSender._ssrc``/``_rtx_ssrc``, announced in the answer).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import av
from aiortc import RTCRtpSender

__all__ = ["SendParameters", "SenderInternalsError", "check_internals", "encoded_packet",
           "on_keyframe_request", "take_over"]


class SenderInternalsError(RuntimeError):
    """aiortc's sender internals are not where this module expects them."""


def check_internals() -> None:
    """Raise :class:`SenderInternalsError` when an internal this module uses has moved."""
    if not callable(getattr(RTCRtpSender, "_send_keyframe", None)):
        raise SenderInternalsError("aiortc RTCRtpSender._send_keyframe is gone")
    if "self._send_keyframe()" not in inspect.getsource(RTCRtpSender._handle_rtcp_packet):
        raise SenderInternalsError("aiortc's PLI/FIR handling no longer calls _send_keyframe")
    if "self.__encoder.pack(data)" not in inspect.getsource(RTCRtpSender._next_encoded_frame):
        raise SenderInternalsError("aiortc's sender no longer packs pre-encoded packets")
    init = inspect.getsource(RTCRtpSender.__init__)
    if "self._ssrc = " not in init or "self._rtx_ssrc = " not in init:
        raise SenderInternalsError("aiortc RTCRtpSender._ssrc/_rtx_ssrc are gone")
    if "self.__rtp_task = " not in inspect.getsource(RTCRtpSender.send):
        raise SenderInternalsError("aiortc's RTCRtpSender.send no longer starts the sending")


def on_keyframe_request(sender: RTCRtpSender, callback: Callable[[], None]) -> None:
    """Call ``callback`` (on the event loop, must not raise) for every PLI or FIR that the
    remote peer sends about ``sender``'s stream."""
    sender._send_keyframe = callback  # type: ignore[method-assign]


def encoded_packet(data: bytes, pts: int, time_base: Fraction) -> av.Packet:
    """An encoded frame as the ``av.Packet`` a sender's track yields for it to pack."""
    packet = av.Packet(data)
    packet.pts = pts
    packet.time_base = time_base
    return packet


class SendParameters:
    """What aiortc negotiated for one sender, caught when it would start sending."""

    def __init__(self, ssrc: int, rtx_ssrc: int) -> None:
        self.ssrc, self.rtx_ssrc = ssrc, rtx_ssrc
        self.payload_type: int | None = None
        self.clock_rate = 0
        self.rtx_payload_type: int | None = None
        self.cname = ""

    @property
    def ready(self) -> bool:
        return self.payload_type is not None


def take_over(sender: RTCRtpSender) -> SendParameters:
    """Keep ``sender`` from sending anything (no RTP task, no RTCP task: the lean send path
    sends instead, on the same SSRCs that the answer announces); the returned object gets the
    negotiated payload type, clock rate, RTX payload type and CNAME once aiortc's connection
    calls ``sender.send(parameters)`` (after the DTLS handshake)."""
    caught = SendParameters(int(sender._ssrc), int(sender._rtx_ssrc))

    async def send(parameters: Any) -> None:
        codec = parameters.codecs[0]
        caught.payload_type = int(codec.payloadType)
        caught.clock_rate = int(codec.clockRate)
        caught.cname = str(parameters.rtcp.cname or "")
        for other in parameters.codecs:
            if other.name.lower() == "rtx" and \
                    int(other.parameters.get("apt", -1)) == caught.payload_type:
                caught.rtx_payload_type = int(other.payloadType)
                break

    sender.send = send  # type: ignore[method-assign]
    return caught
