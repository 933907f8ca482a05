"""The WebRTC kind of publisher: WHIP offers answered with recvonly aiortc peer connections
whose media is written into a :class:`~cloudrec.rooms.hub.RoomHub`.

:meth:`WebRtcIngest.publish` parses the offer (:mod:`cloudrec.webrtc.offer`), builds the peer
connection with our codec preferences and a tapped receiver per kind
(:mod:`cloudrec.webrtc._aiortc_tap`), adjusts its DTLS and ICE for this connection
(:mod:`cloudrec.webrtc._aiortc_transport`, settings in :mod:`cloudrec.webrtc.ice`) and, on the
default lean receive path, attaches a :class:`~cloudrec.rtp.receiver.LeanReceiver` that takes
every SRTP datagram. When the answer is made, the publication is attached to the hub
(``origin="webrtc"``) with its :class:`~cloudrec.webrtc.session.WebRtcSession` as upstream.

Receive path: by default (``receive_path="lean"``) aiortc only negotiates, connects and does
the DTLS handshake; :mod:`cloudrec.rtp.receiver` assembles frames, NACKs, and sends receiver
reports, PLI and REMB itself at about half the CPU (see its docstring for the profile).
``receive_path="aiortc"`` (or ``CLOUDREC_RECEIVE_PATH=aiortc``) keeps aiortc's own receiver
with the tap: the reference the benchmark compares with.

A publication counts from the moment its answer is made; it ends on :meth:`unpublish`, when its
ICE/DTLS connection fails or closes, or when it is not connected within ``connect_timeout_s``.
A connection fails when nothing has come from the publisher for ``liveness_timeout_s``; its
media alone keeps it alive, whether or not it answers consent checks.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from collections.abc import Coroutine
from typing import Any

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from cloudrec.errors import InvalidParameter
from cloudrec.rooms.hub import RoomHub
from cloudrec.webrtc import _aiortc_tap as tap
from cloudrec.webrtc import _aiortc_transport as transport
from cloudrec.webrtc.ice import IceOptions
from cloudrec.webrtc.offer import codec_preferences, offer_kinds
from cloudrec.webrtc.session import WebRtcSession, lean_receiver

__all__ = ["RECEIVE_PATHS", "WebRtcIngest"]

logger = logging.getLogger(__name__)

RECEIVE_PATHS = ("lean", "aiortc")
ORIGIN = "webrtc"


class WebRtcIngest:
    """WHIP publications into ``hub``; what :func:`cloudrec.api.whip.whip_router` publishes
    into on a worker."""

    def __init__(
        self,
        hub: RoomHub,
        *,
        ice_servers: list[Any] | None = None,
        connect_timeout_s: float = 20.0,
        announced_addresses: list[str] | tuple[str, ...] = (),
        port_range: tuple[int, int] | None = None,
        liveness_timeout_s: float = 30.0,
        receive_path: str | None = None,
    ) -> None:
        """``announced_addresses``, ``port_range`` and ``liveness_timeout_s`` are the ICE
        settings described in :mod:`cloudrec.webrtc.ice`; ValueError when one is invalid.
        ``receive_path``: ``"lean"`` or ``"aiortc"`` (default: ``CLOUDREC_RECEIVE_PATH``, else
        ``"lean"``)."""
        path = receive_path or os.environ.get("CLOUDREC_RECEIVE_PATH", "") or "lean"
        if path not in RECEIVE_PATHS:
            raise ValueError(f"receive_path must be one of {RECEIVE_PATHS}, not {path!r}")
        self.hub = hub
        self.receive_path = path
        # No STUN by default: a server reachable by its host address needs none, and aiortc's
        # default (a public STUN server) stalls gathering where there is no internet.
        self._configuration = RTCConfiguration(iceServers=list(ice_servers or []))
        self.ice = IceOptions.build(announced_addresses, port_range, liveness_timeout_s)
        self._connect_timeout_s = connect_timeout_s
        self._sessions: dict[str, WebRtcSession] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        tap.check_internals()
        transport.check_internals()

    @property
    def closed(self) -> bool:
        return self._closed or self.hub.closed

    def session(self, session_id: str) -> WebRtcSession | None:
        return self._sessions.get(session_id)

    def sessions(self) -> list[WebRtcSession]:
        """The live sessions, oldest first."""
        return list(self._sessions.values())

    async def publish(self, appid: int, roomid: str, uid: str, offer_sdp: str) -> tuple[str, str]:
        """Answer a WHIP offer; returns ``(answer_sdp, session_id)``.

        Raises InvalidParameter("sdp", ...) for a malformed offer, one that sends neither audio
        nor video, or one with no codec we take (H.264, VP8, Opus); RuntimeError once closed.
        """
        if self.closed:
            raise RuntimeError("RoomHub is closed")
        offer, kinds = offer_kinds(offer_sdp)
        pc = RTCPeerConnection(self._configuration)
        session = WebRtcSession((appid, str(roomid)), uid, secrets.token_urlsafe(18), pc,
                                self._spawn, self._forget)
        transceivers = {}
        try:
            for kind in kinds:
                transceiver = pc.addTransceiver(kind, direction="recvonly")
                transceiver.setCodecPreferences(codec_preferences(kind))
                tap.install_tap(transceiver.receiver, session.tap_callback(kind)
                                if self.receive_path == "aiortc" else session.idle_tap(kind))
                session.receivers[kind] = transceiver.receiver
                transceivers[kind] = transceiver
            try:
                await pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
                if "video" in transceivers:
                    tap.accept_fir(transceivers["video"], offer)
                answer = await pc.createAnswer()
            except Exception as exc:
                raise InvalidParameter(
                    "sdp", f"cannot use the offer ({exc or type(exc).__name__}); "
                    "codecs taken: H.264 (packetization-mode 1), VP8, Opus"
                ) from exc
            transport.prepare(pc, self.ice)  # DTLS ciphers, ICE candidates and liveness
            if self.receive_path == "lean":
                session.lean = lean_receiver(transceivers, session.deliver, session.sender_clock)
                transport.attach_media(pc, session.lean.port)
                session.lean.start()
            await pc.setLocalDescription(answer)  # gathers ICE candidates first
            if self.closed:
                raise RuntimeError("RoomHub is closed")
        except BaseException:
            if session.lean is not None:
                session.lean.close()
            await pc.close()
            raise
        codecs = {k: tap.negotiated_codec(t) for k, t in transceivers.items()}
        self._commit(session, frozenset(kinds), codecs)
        return pc.localDescription.sdp, session.session_id

    async def unpublish(self, session_id: str) -> bool:
        session = self._sessions.get(session_id)
        if session is None or session.publication is None:
            return False
        self.hub.detach(session.publication, "unpublished")
        await session.pc.close()
        return True

    async def close(self) -> None:
        """End every publication made here and close its peer connection."""
        self._closed = True
        sessions = list(self._sessions.values())
        for session in sessions:
            if session.publication is not None:
                self.hub.detach(session.publication, "hub closed")
        await asyncio.gather(*(s.pc.close() for s in sessions), return_exceptions=True)
        await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- internals -----------------------------------------------------------------------------

    def _commit(self, session: WebRtcSession, kinds: frozenset[str],
                codecs: dict[str, str | None]) -> None:
        appid, roomid = session.key
        pub = self.hub.attach(appid, roomid, session.uid, kinds=kinds, codecs=codecs,
                              upstream=session, origin=ORIGIN, sender_clock=True)
        session.publication = pub
        for kind in kinds:
            session.writers[kind] = pub.writer(kind)
        for kind, wall0 in session.clocks.items():
            pub.set_sender_clock(kind, wall0)
        self._sessions[session.session_id] = session
        pc = session.pc

        @pc.on("connectionstatechange")
        def _on_state() -> None:
            state = pc.connectionState
            if state == "connected" and session.watchdog is not None:
                session.watchdog.cancel()
                session.watchdog = None
            elif state in ("failed", "closed"):
                self.hub.detach(pub, f"connection {state}")

        session.watchdog = asyncio.get_running_loop().call_later(
            self._connect_timeout_s, self._on_connect_timeout, session
        )

    def _on_connect_timeout(self, session: WebRtcSession) -> None:
        session.watchdog = None
        pub = session.publication
        if pub is not None and pub.active and session.pc.connectionState != "connected":
            self.hub.detach(pub, "not connected in time")

    def _forget(self, session: WebRtcSession) -> None:
        self._sessions.pop(session.session_id, None)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.warning("WebRTC task failed: %r", task.exception())
