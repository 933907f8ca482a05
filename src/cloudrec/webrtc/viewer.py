"""WHEP playback: each viewer is a sendonly aiortc peer connection fed, without decoding, from
a room subscription to one publisher (a reader of the room plane, like a recording).

:meth:`WebRtcViewers.play` answers a WHEP offer for publisher ``uid`` of a room. The answer
takes the publisher's own codecs (H.264 or VP8, Opus), so frames pass as they are. Nothing is
decoded and nothing re-encoded, except AAC (RTMP and SRT publishers), which browsers do not
take: it is transcoded to Opus once per publication by an encoder the viewers of that
publication share (:class:`~cloudrec.webrtc.viewer_feed.AacFeeds`).

Send path: by default (``send_path="lean"``) aiortc negotiates, connects and does DTLS only
(its senders are kept from sending, :func:`~cloudrec.webrtc._aiortc_sender.take_over`); each
:class:`~cloudrec.mediatypes.EncodedFrame` is cut into RTP payloads once for all viewers of
the publication (:class:`~cloudrec.webrtc.viewer_feed.PayloadCache`) and each viewer's
:class:`~cloudrec.rtp.sender.LeanSender` sends them synchronously from the frame fan-out, with
its own headers and SRTP, answers NACKs from its packet cache (RTX where negotiated), takes
PLI/FIR and sends sender reports; the viewer's SRTCP reaches it through the same hook as the
lean receive path's (:func:`~cloudrec.webrtc._aiortc_transport.attach_media`).
``send_path="aiortc"`` (or ``CLOUDREC_SEND_PATH=aiortc``) keeps aiortc's ``RTCRtpSender``
sending: each frame becomes an ``av.Packet`` that it packetises, encrypts and keeps in its
history for NACKs, per viewer, in coroutines.

Timing: the sender's SSRC and sequence numbers are its own (the SSRCs the answer announces);
timestamps are the publication's, moved so that they keep rising across a publisher's
reconnect (a new epoch starts from where the previous one ended, plus the time between them:
:class:`RisingClock`).

Keyframes: a viewer's PLI or FIR goes upstream through its subscription
(:meth:`~cloudrec.rooms.subscription.Subscription.request_keyframe`), at most one per publication
every 0.5 s (:class:`KeyframeLimiter`; a request inside that window is sent when it ends, not
dropped). A viewer asks for one as soon as it is connected and drops video until a keyframe
comes, so its first picture is the next keyframe: within one round trip plus an encoder's
reaction, well under a second.

When the publisher leaves, the viewer waits: its session stays, sending nothing, for
``publisher_wait_s`` (the service's ``idle_timeout_s``, 30 s by default). If the same uid
publishes again in that time with the same video codec, the viewer goes on at its first
keyframe with continuous timestamps; otherwise (the wait ends, or the uid comes back with
another video codec) the session ends: its peer connection is closed, which a WHEP client
sees as the connection closing.

A viewer is dropped when its connection is not up within ``connect_timeout_s`` (20 s), when
it fails or closes (no packet from the viewer for the ICE liveness timeout), or on ``stop``
(WHEP ``DELETE``). ``max_viewers`` bounds the sessions of one room (CapacityError beyond).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from collections.abc import Coroutine
from typing import Any

from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc import sdp as aiortc_sdp

from cloudrec.errors import CapacityError, InvalidParameter, RecordingError
from cloudrec.mediatypes import EncodedFrame
from cloudrec.rooms.hub import RoomHub
from cloudrec.rooms.subscription import PublisherEvent, PublisherInfo, RoomKey, Subscription
from cloudrec.rtp.sender import LeanSender, SendStream
from cloudrec.webrtc import _aiortc_sender as sender_internals
from cloudrec.webrtc import _aiortc_tap as tap
from cloudrec.webrtc import _aiortc_transport as transport
from cloudrec.webrtc.ice import IceOptions
from cloudrec.webrtc.viewer_feed import (
    AacFeeds,
    KeyframeLimiter,
    PacketTrack,
    PayloadCache,
    RisingClock,
)

__all__ = ["NOT_PUBLISHING", "SEND_PATHS", "ViewerSession", "WebRtcViewers"]

logger = logging.getLogger(__name__)

NOT_PUBLISHING = 4005  # the code of "uid is not publishing in this room" (WHEP answers 404)
CLOCK = {"video": 90_000, "audio": 48_000}
SEND_PATHS = ("lean", "aiortc")


def _preferences(kind: str, codec: str) -> list[Any]:
    """The sender's codecs for ``codec`` (AAC goes out as Opus), RTX kept for video."""
    wanted = {"aac": "opus"}.get(codec, codec)
    caps = RTCRtpSender.getCapabilities(kind).codecs
    chosen = [c for c in caps if c.name.lower() == wanted]
    if kind == "video" and wanted == "h264":  # constrained baseline first
        chosen.sort(key=lambda c: str(c.parameters.get("profile-level-id", "")) != "42e01f")
    return chosen + [c for c in caps if c.name.lower() == "rtx"] if chosen else []


class ViewerSession:
    """One viewer of one publisher: its peer connection, subscription and tracks."""

    def __init__(self, service: WebRtcViewers, key: RoomKey, uid: str, session_id: str,
                 pc: RTCPeerConnection, sub: Subscription) -> None:
        self.service, self.key, self.uid, self.session_id = service, key, uid, session_id
        self.pc, self.sub = pc, sub
        self.tracks: dict[str, PacketTrack] = {}
        self.codecs: dict[str, str] = {}  # kind -> the publisher's codec at play time
        self.clocks = {kind: RisingClock(rate) for kind, rate in CLOCK.items()}
        self.connected = False
        self.need_key = True
        self.frames = 0
        self.ended = False
        self.aac = False  # audio comes from the shared transcoder
        self.watchdog: asyncio.TimerHandle | None = None
        self.waiting: asyncio.TimerHandle | None = None  # the publisher left: how long to wait
        self.pump: asyncio.Task[None] | None = None
        self.lean: LeanSender | None = None  # the lean send path's sender
        self.params: dict[str, sender_internals.SendParameters] = {}

    # -- frames out ----------------------------------------------------------------------------

    async def run(self) -> None:
        async for item in self.sub:
            if isinstance(item, PublisherEvent):
                self._event(item)
            elif self.connected:
                frame = item[1]
                if frame.kind == "audio" and self.aac:
                    continue  # the transcoder's Opus goes out instead
                self.send(frame)
        self.service.end(self, "the room closed")

    def send(self, frame: EncodedFrame) -> None:
        track = self.tracks.get(frame.kind)
        if track is None or not self.connected:
            return
        if frame.kind == "video":
            if self.need_key:
                if not frame.keyframe:
                    self.service.keyframes.ask(self.sub, self.uid)
                    return
                self.need_key = False
        pts = self.clocks[frame.kind].map(frame.timestamp, frame.epoch, frame.arrival)
        lean = self.lean
        if lean is not None:
            if (frame.kind in lean.streams or self._lean_stream(frame.kind)) and lean.send_frame(
                    frame.kind, self.service.payloads.payloads(frame), pts, frame.arrival):
                self.frames += 1
            elif frame.kind == "video":
                self.need_key = True  # not sent (no keys or route yet): start at a keyframe
            return
        if not track.put(frame.data, pts, self.clocks[frame.kind].time_base) \
                and frame.kind == "video" and not frame.keyframe:
            self.need_key = True  # the queue started over: wait for the next keyframe
        self.frames += 1

    def _lean_stream(self, kind: str) -> bool:
        """Add ``kind``'s stream to the lean sender once aiortc has negotiated it."""
        params = self.params.get(kind)
        if params is None or not params.ready or self.lean is None:
            return False
        rtx = params.rtx_payload_type
        assert params.payload_type is not None
        self.lean.cname = params.cname.encode()
        self.lean.add_stream(SendStream(kind, params.ssrc, params.payload_type,
                                        params.clock_rate, params.rtx_ssrc if rtx else None, rtx))
        self.lean.start()
        return True

    def _event(self, event: PublisherEvent) -> None:
        if event.kind == "unpublished":
            if self.waiting is None and not self.ended:
                self.waiting = asyncio.get_running_loop().call_later(
                    self.service.publisher_wait_s, self.service.end, self,
                    "the publisher did not return")
            return
        info = event.info
        if self.waiting is not None:
            self.waiting.cancel()
            self.waiting = None
        if info is None:
            return
        if "video" in self.tracks and info.video_codec not in (None, self.codecs.get("video")):
            self.service.end(self, f"the publisher came back with {info.video_codec} video")
            return
        self._use_aac(info)
        self.need_key = True
        if self.connected:
            self.service.keyframes.ask(self.sub, self.uid)

    def _use_aac(self, info: PublisherInfo) -> None:
        aac = "audio" in self.tracks and info.audio_codec == "aac"
        if aac != self.aac:
            self.aac = aac
            feeds = self.service.aac
            if aac:
                feeds.listen(self.key, self.uid, self.send)
            else:
                feeds.unlisten(self.key, self.uid, self.send)

    # -- the viewer's side ---------------------------------------------------------------------

    def on_connected(self) -> None:
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None
        if not self.connected:
            self.connected = True
            self.need_key = True
            self.service.keyframes.ask(self.sub, self.uid)

    def on_keyframe_request(self) -> None:
        """A PLI or FIR from the viewer."""
        if not self.ended:
            self.service.keyframes.ask(self.sub, self.uid)

    def close(self) -> None:
        self.ended = True
        for handle in (self.watchdog, self.waiting):
            if handle is not None:
                handle.cancel()
        self.watchdog = self.waiting = None
        if self.aac:
            self.service.aac.unlisten(self.key, self.uid, self.send)
            self.aac = False
        self.sub.close()
        if self.lean is not None:
            self.lean.close()
        if self.pump is not None and self.pump is not asyncio.current_task():
            self.pump.cancel()
        for track in self.tracks.values():
            track.stop()


class WebRtcViewers:
    """WHEP viewers of the publishers in ``hub``."""

    def __init__(self, hub: RoomHub, *, ice: IceOptions | None = None, max_viewers: int = 50,
                 publisher_wait_s: float = 30.0, connect_timeout_s: float = 20.0,
                 ice_servers: list[Any] | None = None, send_path: str | None = None) -> None:
        """``send_path``: ``"lean"`` (:mod:`cloudrec.rtp.sender`) or ``"aiortc"`` (aiortc's
        RTCRtpSender); default ``CLOUDREC_SEND_PATH``, else ``"lean"``."""
        path = send_path or os.environ.get("CLOUDREC_SEND_PATH", "") or "lean"
        if path not in SEND_PATHS:
            raise ValueError(f"send_path must be one of {SEND_PATHS}, not {path!r}")
        self.send_path = path
        self.payloads = PayloadCache()
        self.hub = hub
        self.ice = ice or IceOptions.build((), None, 30.0)
        self.max_viewers = max_viewers
        self.publisher_wait_s = publisher_wait_s
        self.connect_timeout_s = connect_timeout_s
        self.keyframes = KeyframeLimiter()
        self.aac = AacFeeds(hub)
        self._configuration = RTCConfiguration(iceServers=list(ice_servers or []))
        self._sessions: dict[str, ViewerSession] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        sender_internals.check_internals()
        tap.check_internals()
        transport.check_internals()

    def sessions(self, key: RoomKey | None = None) -> list[ViewerSession]:
        return [s for s in self._sessions.values() if key is None or s.key == key]

    def rooms(self) -> list[RoomKey]:
        """Rooms with a viewer here (they stay placed here while their viewers wait)."""
        return list({s.key for s in self._sessions.values()})

    async def play(self, appid: int, roomid: str, uid: str, offer_sdp: str) -> tuple[str, str]:
        """Answer a WHEP offer to watch ``uid``; ``(answer_sdp, session_id)``.

        Raises RecordingError(4005) when ``uid`` does not publish in the room,
        CapacityError beyond ``max_viewers``, InvalidParameter("sdp") for an offer that is not
        SDP or cannot receive the publisher's codecs, RuntimeError once closed."""
        if self._closed or self.hub.closed:
            raise RuntimeError("viewers closed")
        key = (appid, str(roomid))
        info = next((p for p in self.hub.publishers(*key) if p.uid == uid), None)
        if info is None:
            raise RecordingError(f"uid {uid!r} is not publishing in room {roomid!r}",
                                 NOT_PUBLISHING)
        if len(self.sessions(key)) >= self.max_viewers:
            raise CapacityError(f"room {roomid!r} has {self.max_viewers} viewers (max_viewers)")
        offer = _parse_offer(offer_sdp)
        wanted = [m.kind for m in offer.media if m.kind in ("audio", "video")
                  and m.direction in ("recvonly", "sendrecv")]
        codecs = {"video": info.video_codec, "audio": info.audio_codec}
        kinds = [k for k in dict.fromkeys(wanted) if k in info.kinds and codecs.get(k)]
        if not kinds:
            raise InvalidParameter("sdp", f"the offer receives none of what {uid!r} sends "
                                   f"({', '.join(sorted(info.kinds))})")
        pc = RTCPeerConnection(self._configuration)
        sub = self.hub.subscribe(*key, uid, relay=False)
        session = ViewerSession(self, key, uid, secrets.token_urlsafe(18), pc, sub)
        try:
            for kind in kinds:
                track = PacketTrack(kind)
                transceiver = pc.addTransceiver(track, direction="sendonly")
                preferences = _preferences(kind, str(codecs[kind]))
                if not preferences:
                    raise InvalidParameter("sdp", f"cannot send {codecs[kind]} {kind}")
                transceiver.setCodecPreferences(preferences)
                sender_internals.on_keyframe_request(transceiver.sender,
                                                     session.on_keyframe_request)
                if self.send_path == "lean":
                    session.params[kind] = sender_internals.take_over(transceiver.sender)
                session.tracks[kind] = track
                session.codecs[kind] = str(codecs[kind])
            try:
                await pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
                answer = await pc.createAnswer()
            except Exception as exc:
                raise InvalidParameter(
                    "sdp", f"cannot use the offer ({exc or type(exc).__name__})") from exc
            for transceiver in pc.getTransceivers():
                if transceiver.kind in session.tracks and tap.negotiated_codec(transceiver) \
                        is None:
                    raise InvalidParameter("sdp", f"the viewer takes no {transceiver.kind} "
                                           f"codec of the publisher's ({codecs[transceiver.kind]})")
            transport.prepare(pc, self.ice)
            if self.send_path == "lean":
                session.lean = LeanSender("", session.on_keyframe_request)
                session.lean.set_route(transport.media_route(pc))
                transport.attach_media(pc, session.lean.port)
            await pc.setLocalDescription(answer)
            if self._closed:
                raise RuntimeError("viewers closed")
        except BaseException:
            session.close()
            await pc.close()
            raise
        self._commit(session, info)
        return pc.localDescription.sdp, session.session_id

    async def stop(self, session_id: str) -> bool:
        session = self._sessions.get(session_id)
        if session is None:
            return False
        self.end(session, "stopped (DELETE)")
        return True

    def end(self, session: ViewerSession, reason: str) -> None:
        """End a viewer (idempotent): its subscription, tracks and peer connection."""
        if self._sessions.pop(session.session_id, None) is None:
            return
        logger.info("viewer %s of %s/%s uid=%s ended: %s", session.session_id[:6], *session.key,
                    session.uid, reason)
        session.close()
        if not any(s.key == session.key and s.uid == session.uid
                   for s in self._sessions.values()):
            self.keyframes.forget(session.key, session.uid)
        self._spawn(session.pc.close())

    async def close(self) -> None:
        self._closed = True
        for session in list(self._sessions.values()):
            self.end(session, "shutting down")
        self.aac.close()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- internals -----------------------------------------------------------------------------

    def _commit(self, session: ViewerSession, info: PublisherInfo) -> None:
        self._sessions[session.session_id] = session
        session._use_aac(info)
        pc = session.pc

        @pc.on("connectionstatechange")
        def _on_state() -> None:
            state = pc.connectionState
            if state == "connected":
                session.on_connected()
            elif state in ("failed", "closed"):
                self.end(session, f"connection {state}")

        session.watchdog = asyncio.get_running_loop().call_later(
            self.connect_timeout_s, self._on_connect_timeout, session)
        session.pump = asyncio.get_running_loop().create_task(session.run())
        logger.info("viewer %s of %s/%s uid=%s: %s", session.session_id[:6], *session.key,
                    session.uid, session.codecs)

    def _on_connect_timeout(self, session: ViewerSession) -> None:
        session.watchdog = None
        if not session.connected:
            self.end(session, "not connected in time")

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _parse_offer(offer_sdp: str) -> aiortc_sdp.SessionDescription:
    """The parsed offer; InvalidParameter("sdp") when it is not SDP."""
    if not offer_sdp.lstrip().startswith("v=0"):
        raise InvalidParameter("sdp", "malformed SDP offer (no v=0 line)")
    try:
        return aiortc_sdp.SessionDescription.parse(offer_sdp)
    except Exception as exc:
        raise InvalidParameter("sdp", f"malformed SDP offer ({exc or type(exc).__name__})") \
            from exc
