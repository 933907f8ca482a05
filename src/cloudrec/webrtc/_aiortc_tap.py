"""aiortc's receiver and negotiation internals: encoded frames out of an RTCRtpReceiver, and
what the answer negotiated.

Written for, and pinned to, **aiortc 1.16.0** (checked at import: another version refuses to
load, so an upgrade is a deliberate act that re-reads this file and reruns its tests).

How aiortc 1.16.0 receives media: ``RTCRtpReceiver._handle_rtp_packet`` runs on the event loop,
depayloads each RTP packet, reassembles frames in a jitter buffer and puts
``(codec, JitterFrame)`` into the private ``queue.Queue`` ``receiver.__decoder_queue``
(mangled ``_RTCRtpReceiver__decoder_queue``). ``receive()`` starts a decoder thread that
``get()``s from that queue and decodes; ``None`` on the queue ends the thread and the track.
``RTCPeerConnection`` calls ``receive()`` only from ``__connect()``, after ICE and DTLS are up,
so a queue swapped in right after ``setRemoteDescription`` (or in its ``track`` event) is the
one the decoder thread gets.

:func:`install_tap` swaps that queue for a :class:`_TapQueue`: every ``(codec, frame)`` goes to
a callback, synchronously on the event loop, and nothing is ever decoded; ``None`` is forwarded
to a real queue, so the (idle) decoder thread still ends cleanly when the receiver stops.

``JitterFrame`` has ``.data`` (H.264: an Annex B access unit with 4-byte start codes; VP8: one
frame; Opus: one packet) and ``.timestamp`` (RTP timestamp already unwrapped by aiortc's
``TimestampMapper``, starting at 0). ``codec`` is an ``RTCRtpCodecParameters`` (RTX already
unwrapped to the media codec).

For the lean receive path (:mod:`cloudrec.rtp.receiver`), :func:`receive_parameters` reads what
was negotiated from ``transceiver._codecs`` and ``transceiver._headerExtensions`` (set by
``setRemoteDescription``) and the SSRC aiortc gave the transceiver's sender (``sender._ssrc``),
which the lean path's RTCP is sent from.

aiortc negotiates ``nack pli`` but never ``ccm fir``: :func:`accept_fir` adds ``ccm fir`` to
the answer of a video codec whose offer lists it (``transceiver._codecs`` after
``setRemoteDescription``, before ``createAnswer``), so the lean path can ask a publisher that
takes only FIR for a keyframe.

Keyframe requests on aiortc's own receive path use ``receiver._send_rtcp_pli(ssrc)`` with the
ssrc from the public ``getSynchronizationSources()``. Codec negotiation results are read from
``transceiver._codecs``.

H.264 access units are made conformant before the callback sees them
(:func:`cloudrec.media.codecs.h264.conformant_access_unit`): aiortc joins every NAL unit of an
RTP timestamp in arrival order, and a sender that repeats SPS/PPS before *each* IDR slice of a
multi-slice picture (GStreamer's ``x264enc tune=zerolatency`` slices frames,
``rtph264pay config-interval=-1`` repeats the parameter sets per IDR NAL) yields parameter sets
between slices, which decoders and parsers take as the start of a new picture: half pictures, and
timestamp-less frames in a remuxed recording.

tests/e2e/test_rooms.py checks every internal named here, so a move in aiortc fails loudly there.
"""

from __future__ import annotations

import inspect
import logging
import queue
from collections.abc import Callable
from typing import Any

import aiortc
from aiortc import RTCRtpReceiver, RTCRtpSender, RTCRtpTransceiver
from aiortc import sdp as aiortc_sdp
from aiortc.rtcrtpparameters import RTCRtcpFeedback

from cloudrec.media.codecs.h264 import conformant_access_unit

__all__ = [
    "AIORTC_VERSION",
    "accept_fir",
    "TapError",
    "FrameCallback",
    "check_internals",
    "install_tap",
    "is_tapped",
    "negotiated_codec",
    "receive_parameters",
    "request_keyframe",
]

ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"

AIORTC_VERSION = "1.16.0"

if aiortc.__version__ != AIORTC_VERSION:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"cloudrec.webrtc._aiortc_tap was written for aiortc {AIORTC_VERSION}, "
        f"found {aiortc.__version__}; re-check the internals it uses before upgrading"
    )

logger = logging.getLogger(__name__)

_QUEUE_ATTR = "_RTCRtpReceiver__decoder_queue"
_STARTED_ATTR = "_RTCRtpReceiver__started"

# (codec: RTCRtpCodecParameters, frame: JitterFrame) -> None, called on the event loop.
FrameCallback = Callable[[Any, Any], None]


class TapError(RuntimeError):
    """aiortc's internals are not where this module expects them."""


class _TapQueue:
    """Stands in for the receiver's decoder queue: frames go to a callback, ``None`` to a queue."""

    __slots__ = ("_callback", "_real", "_failed")

    def __init__(self, callback: FrameCallback) -> None:
        self._callback = callback
        self._real: queue.Queue[None] = queue.Queue()
        self._failed = False

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if item is None:
            self._real.put(None)
            return
        try:
            codec, frame = item
            if getattr(codec, "name", "").lower() == "h264":
                frame.data = conformant_access_unit(frame.data)
            self._callback(codec, frame)
        except Exception:
            # An exception here would end aiortc's DTLS receive loop: log once, keep going.
            if not self._failed:
                self._failed = True
                logger.exception("encoded-frame callback failed")

    def get(self, block: bool = True, timeout: float | None = None) -> None:
        # The decoder thread blocks here until the receiver stops.
        return self._real.get(block, timeout)


def check_internals() -> None:
    """Raise :class:`TapError` when an aiortc internal this module uses is missing."""
    for cls, name in (
        (RTCRtpReceiver, "_handle_rtp_packet"),
        (RTCRtpReceiver, "_send_rtcp_pli"),
        (RTCRtpReceiver, "getSynchronizationSources"),
        (RTCRtpReceiver, "receive"),
    ):
        if not callable(getattr(cls, name, None)):
            raise TapError(f"aiortc {cls.__name__}.{name} is gone")
    source = inspect.getsource(RTCRtpTransceiver.__init__)
    if "self._codecs" not in source or "self._headerExtensions" not in source:
        raise TapError("aiortc RTCRtpTransceiver._codecs/_headerExtensions are gone")
    if "self._ssrc = random32()" not in inspect.getsource(RTCRtpSender.__init__):
        raise TapError("aiortc RTCRtpSender._ssrc is gone")


def install_tap(receiver: RTCRtpReceiver, callback: FrameCallback) -> None:
    """Route every encoded frame of ``receiver`` to ``callback`` instead of its decoder.

    Must run before ``receiver.receive()`` (i.e. before the connection is up).
    """
    current = getattr(receiver, _QUEUE_ATTR, None)
    if not isinstance(current, (queue.Queue, _TapQueue)):
        raise TapError("aiortc RTCRtpReceiver has no __decoder_queue (aiortc internals moved)")
    if getattr(receiver, _STARTED_ATTR, None) is not False:
        raise TapError("receiver already started: the tap must be installed before receive()")
    setattr(receiver, _QUEUE_ATTR, _TapQueue(callback))


def is_tapped(receiver: RTCRtpReceiver) -> bool:
    return isinstance(getattr(receiver, _QUEUE_ATTR, None), _TapQueue)


async def request_keyframe(receiver: RTCRtpReceiver) -> int:
    """Send an RTCP PLI for every ssrc the receiver heard lately; returns how many were sent."""
    sources = receiver.getSynchronizationSources()
    for source in sources:
        await receiver._send_rtcp_pli(source.source)
    return len(sources)


def negotiated_codec(transceiver: RTCRtpTransceiver) -> str | None:
    """Lower-case name of the first negotiated media codec (``"h264"``, ``"vp8"``, ``"opus"``)."""
    for codec in getattr(transceiver, "_codecs", None) or ():
        name = codec.name.lower()
        if name not in ("rtx", "red", "ulpfec", "flexfec-03"):
            return name
    return None


_FIR = RTCRtcpFeedback(type="ccm", parameter="fir")
_FEEDBACK = {("goog-remb", None): "goog-remb", ("nack", "pli"): "pli", ("ccm", "fir"): "fir"}


def accept_fir(transceiver: RTCRtpTransceiver, offer: aiortc_sdp.SessionDescription) -> None:
    """Answer ``ccm fir`` for each negotiated codec whose offer (same payload type) lists it.

    Call between ``setRemoteDescription`` and ``createAnswer``: the answer is written from
    ``transceiver._codecs``, whose feedback aiortc reduced to what it knows (no FIR)."""
    offered = {
        codec.payloadType
        for media in offer.media
        if media.kind == transceiver.kind
        for codec in media.rtp.codecs
        if _FIR in (codec.rtcpFeedback or ())
    }
    for codec in getattr(transceiver, "_codecs", None) or ():
        if codec.payloadType in offered and _FIR not in codec.rtcpFeedback:
            codec.rtcpFeedback.append(_FIR)


def receive_parameters(transceiver: RTCRtpTransceiver) -> tuple[
        list[tuple[str, int, int, int | None, frozenset[str]]], int | None, int]:
    """What the answer negotiated for ``transceiver``: ``(codecs, abs_send_time_id, ssrc)``,
    each codec ``(lower-case name, payload type, clock rate, RTX apt or None, feedback)`` with
    the feedback it takes among ``"goog-remb"``, ``"pli"`` and ``"fir"``."""
    codecs = []
    for codec in getattr(transceiver, "_codecs", None) or ():
        apt = codec.parameters.get("apt") if codec.name.lower() == "rtx" else None
        feedback = frozenset(_FEEDBACK[kind] for fb in codec.rtcpFeedback or ()
                             if (kind := (fb.type, fb.parameter)) in _FEEDBACK)
        codecs.append((codec.name.lower(), int(codec.payloadType), int(codec.clockRate),
                       int(apt) if apt is not None else None, feedback))
    abs_send_time = next((ext.id for ext in getattr(transceiver, "_headerExtensions", ())
                          if ext.uri == ABS_SEND_TIME), None)
    return codecs, abs_send_time, int(transceiver.sender._ssrc)
