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
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from fractions import Fraction

import av
from aiortc import RTCRtpSender

__all__ = ["SenderInternalsError", "check_internals", "encoded_packet", "on_keyframe_request"]


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
