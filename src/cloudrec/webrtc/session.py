"""One WHIP publication's peer connection: the :class:`~cloudrec.rooms.publication.Upstream`
of its room publication.

Frames reach the publication through :attr:`WebRtcSession.writers` (one
:meth:`~cloudrec.rooms.publication.Publication.writer` per kind, filled in when the answer is
committed; frames before that are dropped). On the lean receive path they come from the
:class:`~cloudrec.rtp.receiver.LeanReceiver`, which gets every SRTP datagram; aiortc's receiver
stays tapped (:mod:`cloudrec.webrtc._aiortc_tap`) so it decodes nothing, and what its tap
yields is not passed on: it would count timestamps from an origin of its own. On the
``"aiortc"`` receive path the tap is the source of frames.

Keyframe requests: an RTCP PLI (or FIR) from the lean receiver, else aiortc's own PLI.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from aiortc import RTCPeerConnection, RTCRtpReceiver

from cloudrec.rooms.publication import Publication, Write
from cloudrec.rooms.subscription import RoomKey
from cloudrec.rtp.receiver import CodecInfo, LeanReceiver
from cloudrec.webrtc import _aiortc_tap as tap

__all__ = ["WebRtcSession", "lean_receiver"]

logger = logging.getLogger(__name__)

Spawn = Callable[[Coroutine[Any, Any, Any]], None]


class WebRtcSession:
    """A recvonly peer connection answering one WHIP offer (``session_id`` names it in the
    WHIP session URL)."""

    def __init__(self, key: RoomKey, uid: str, session_id: str, pc: RTCPeerConnection,
                 spawn: Spawn, on_close: Callable[[WebRtcSession], None]) -> None:
        self.key, self.uid, self.session_id, self.pc = key, uid, session_id, pc
        self.receivers: dict[str, RTCRtpReceiver] = {}
        self.lean: LeanReceiver | None = None
        self.publication: Publication | None = None
        self.writers: dict[str, Write] = {}
        self.clocks: dict[str, float | None] = {}  # the lean receiver's sender clock per kind
        self.watchdog: asyncio.TimerHandle | None = None
        self._spawn = spawn
        self._on_close = on_close

    @property
    def frames(self) -> int:
        """Frames handed to the room so far."""
        return self.publication.frames if self.publication is not None else 0

    # -- Upstream ------------------------------------------------------------------------------

    @property
    def state(self) -> str:
        return self.pc.connectionState

    def request_keyframe(self) -> None:
        if "video" not in self.receivers:
            return
        if self.lean is not None and self.lean.request_keyframe():
            return
        self._spawn(tap.request_keyframe(self.receivers["video"]))

    def close(self) -> None:
        """Stop the watchdog and the receiver; the peer connection closes in the background."""
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None
        self._on_close(self)
        if self.lean is not None:
            self.lean.close()
        self._spawn(self.pc.close())

    # -- frames in -----------------------------------------------------------------------------

    def deliver(self, kind: str, name: str, clock_rate: int, data: bytes, timestamp: int) -> None:
        """The lean receiver's frames (see :data:`cloudrec.rtp.receiver.OnFrame`)."""
        write = self.writers.get(kind)
        if write is not None:
            write(name, clock_rate, data, timestamp)

    def sender_clock(self, kind: str, wall0: float | None) -> None:
        """The lean receiver's sender clock (see :data:`cloudrec.rtp.receiver.OnSenderClock`),
        kept until the publication exists."""
        self.clocks[kind] = wall0
        if self.publication is not None:
            self.publication.set_sender_clock(kind, wall0)

    def tap_callback(self, kind: str) -> tap.FrameCallback:
        """aiortc's ``(codec, JitterFrame)`` to the publication's writer (the aiortc path)."""
        writers = self.writers

        def on_frame(codec: Any, jitter_frame: Any) -> None:
            write = writers.get(kind)
            if write is not None:
                write(codec.name.lower(), codec.clockRate, jitter_frame.data,
                      jitter_frame.timestamp)

        return on_frame

    def idle_tap(self, kind: str) -> tap.FrameCallback:
        """aiortc's receiver on the lean path: it gets no SRTP, so no frames; should one come,
        it is dropped (and said once) rather than mixed with the lean path's on another
        clock."""
        said = False

        def on_frame(codec: Any, jitter_frame: Any) -> None:
            nonlocal said
            if not said:
                said = True
                logger.warning("%s/%s uid=%s: a %s frame came through aiortc's receiver on the "
                               "lean path; dropped", *self.key, self.uid, kind)

        return on_frame


def lean_receiver(transceivers: dict[str, Any],
                  on_frame: Callable[[str, str, int, bytes, int], None],
                  on_sender_clock: Callable[[str, float | None], None] | None = None
                  ) -> LeanReceiver:
    """A lean receiver for what the answer negotiated."""
    codecs: list[CodecInfo] = []
    abs_send_time = None
    remb = False
    rtcp_ssrc = 0
    for kind, transceiver in transceivers.items():
        negotiated, ast_id, ssrc = tap.receive_parameters(transceiver)
        rtcp_ssrc = rtcp_ssrc or ssrc
        if kind == "video":
            abs_send_time = ast_id
            remb = any("goog-remb" in c[4] for c in negotiated)
        codecs += [CodecInfo(kind, name, pt, clock, apt, fir="fir" in fb and "pli" not in fb)
                   for name, pt, clock, apt, fb in negotiated]
    return LeanReceiver(codecs, on_frame, rtcp_ssrc=rtcp_ssrc, abs_send_time_id=abs_send_time,
                        remb=remb, on_sender_clock=on_sender_clock)
