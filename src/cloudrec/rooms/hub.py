"""Rooms, publishers and the encoded media they send, handed to subscribers per (room, uid).

A :class:`RoomHub` answers WHIP offers with recvonly aiortc peer connections whose receivers are
tapped (:mod:`cloudrec.rooms._aiortc_tap`): received H.264 access units, VP8 frames and Opus
packets go, still encoded, synchronously from the event loop to every matching
:class:`Subscription`. Nothing is decoded and no thread is involved.

Receive path: by default (``receive_path="lean"``) aiortc only negotiates, connects and does
the DTLS handshake; every SRTP packet is then taken by :mod:`cloudrec.rooms.lean`, which
assembles frames, NACKs, and sends receiver reports, PLI and REMB itself at about half the CPU
(see its docstring for the profile). It is the publication's only source of frames: aiortc's
receiver stays tapped, so it decodes nothing, but what its tap yields is not passed on (it would
count timestamps from an origin of its own). ``receive_path="aiortc"`` (or
``CLOUDREC_RECEIVE_PATH=aiortc``) keeps aiortc's own receiver with the tap: the reference the
benchmark compares with.

Presence: a uid publishes at most one audio and one video track; a second publish for the same
uid replaces the first (the old peer connection is closed, subscribers see ``unpublished`` then
``published`` with a new ``epoch``) and keeps the uid's place in join order and its
``joined_at``. A publication counts from the moment its answer is made; it ends on
:meth:`RoomHub.unpublish`, when its ICE/DTLS connection fails or closes, or when it is not
connected within ``connect_timeout_s``. A connection fails when nothing has come from the
publisher for ``liveness_timeout_s``; its media alone keeps it alive, whether or not it answers
consent checks (:mod:`cloudrec.rooms.ice`, :mod:`cloudrec.rooms._aiortc_transport`).

Relayed publications: a room lives on one worker; another worker that records it gets its
publications over :mod:`cloudrec.relay` and adds them here with :meth:`RoomHub.add_relayed`. They
sit in the room beside WebRTC publications, so subscribers see the same events and frames and
:meth:`Subscription.request_keyframe` goes upstream through the handle's callback. Their infos
say ``relayed=True``, and ``is_publishing``/``publishers`` take ``relayed=False`` to ask about
this worker's own publishers only. The hooks :attr:`RoomHub.on_room_subscribed` and
:attr:`RoomHub.on_room_unsubscribed` let the wiring open and release relays as recordings come
and go.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc import sdp as aiortc_sdp

from cloudrec.errors import InvalidParameter
from cloudrec.media.codecs import keyframe_detector
from cloudrec.mediatypes import EncodedFrame
from cloudrec.rooms import _aiortc_tap as tap
from cloudrec.rooms import _aiortc_transport as transport
from cloudrec.rooms.ice import IceOptions
from cloudrec.rooms.lean import CodecInfo, LeanReceiver
from cloudrec.rooms.stats import PublicationStats
from cloudrec.rooms.subscription import (
    PublisherEvent,
    PublisherInfo,
    RoomKey,
    Subscription,
    SubscriptionClosed,
)

__all__ = [
    "PublisherEvent",
    "PublisherInfo",
    "RelayedPublication",
    "RoomHub",
    "Subscription",
    "SubscriptionClosed",
]

logger = logging.getLogger(__name__)

@dataclass(eq=False)
class _Publication:
    key: RoomKey
    uid: str
    session_id: str
    epoch: int
    pc: RTCPeerConnection
    receivers: dict[str, RTCRtpReceiver] = field(default_factory=dict)
    info: PublisherInfo | None = None
    active: bool = False
    frames: int = 0
    last_arrival: float = 0.0
    watchdog: asyncio.TimerHandle | None = None
    stats: PublicationStats = field(default_factory=PublicationStats)
    lean: LeanReceiver | None = None


RECEIVE_PATHS = ("lean", "aiortc")


@dataclass(eq=False)
class RelayedPublication:
    """A publication whose encoded media arrives over a relay from the worker that owns the
    room: the handle :meth:`RoomHub.add_relayed` returns.

    It sits in ``_Room.publications`` beside WebRTC publications, so join order, the replay on
    subscribing and replacement by a later WebRTC publish of the same uid need no new code.
    ``RoomHub._remove`` ends every publication alike; what it reads that only a WebRTC one has
    (a session, a connect watchdog, a peer connection to close) is inert here.
    """

    key: RoomKey
    info: PublisherInfo
    request_keyframe: Callable[[], None]  # sends the request upstream; never raises
    active: bool = True
    frames: int = 0
    session_id: ClassVar[str] = ""  # never a key of RoomHub._sessions
    watchdog: ClassVar[None] = None

    @property
    def uid(self) -> str:
        return self.info.uid

    @property
    def epoch(self) -> int:
        """This hub's epoch for the publication: relayed frames must carry it."""
        return self.info.epoch

    @property
    def pc(self) -> RelayedPublication:
        return self  # what RoomHub._remove closes

    async def close(self) -> None:
        """Nothing to close: the relay link sees ``active`` turn False and stops feeding it."""


@dataclass(eq=False)
class _Room:
    publications: dict[str, _Publication] = field(default_factory=dict)  # join order
    subscriptions: list[Subscription] = field(default_factory=list)


def _codec_preferences(kind: str) -> list[Any]:
    """H.264 (constrained baseline first), then VP8, for video; Opus for audio; RTX kept."""
    caps = RTCRtpSender.getCapabilities(kind).codecs
    if kind == "audio":
        return [c for c in caps if c.mimeType.lower() == "audio/opus"]

    def rank(c: Any) -> int:
        mime = c.mimeType.lower()
        if mime == "video/h264":
            return 0 if str(c.parameters.get("profile-level-id", "")).lower() == "42e01f" else 1
        return {"video/vp8": 2, "video/rtx": 3}.get(mime, 9)

    return sorted((c for c in caps if rank(c) < 9), key=rank)


def _offer_kinds(offer_sdp: str) -> tuple[aiortc_sdp.SessionDescription, list[str]]:
    """The parsed offer and the kinds it sends, in m-line order; InvalidParameter when it is
    not a usable offer."""
    try:
        description = aiortc_sdp.SessionDescription.parse(offer_sdp)
    except Exception as exc:
        raise InvalidParameter("sdp", f"malformed SDP offer ({exc or type(exc).__name__})") from exc
    if not offer_sdp.lstrip().startswith("v=0"):
        raise InvalidParameter("sdp", "malformed SDP offer (no v=0 line)")
    kinds: list[str] = []
    for media in description.media:
        if media.kind not in ("audio", "video") or media.direction in ("recvonly", "inactive"):
            continue
        if media.kind in kinds:
            raise InvalidParameter("sdp", f"more than one {media.kind} track offered")
        kinds.append(media.kind)
    if not kinds:
        raise InvalidParameter("sdp", "the offer sends neither audio nor video")
    return description, kinds


class RoomHub:
    """Rooms keyed by ``(appid, roomid)``: WHIP publications in, encoded media out."""

    #: Called with a room's key when a subscription (``relay=True``) is made to a room that has
    #: no WebRTC publication here: the wiring may open a relay from the room's owner.
    on_room_subscribed: Callable[[RoomKey], None] | None = None
    #: Called with a room's key when its last ``relay=True`` subscription ends: the wiring may
    #: release the relay.
    on_room_unsubscribed: Callable[[RoomKey], None] | None = None

    def __init__(
        self,
        *,
        ice_servers: list[Any] | None = None,
        queue_size: int = 512,
        connect_timeout_s: float = 20.0,
        announced_addresses: list[str] | tuple[str, ...] = (),
        port_range: tuple[int, int] | None = None,
        liveness_timeout_s: float = 30.0,
        receive_path: str | None = None,
    ) -> None:
        """``announced_addresses``, ``port_range`` and ``liveness_timeout_s`` are the ICE
        settings described in :mod:`cloudrec.rooms.ice`; ValueError when one is invalid.
        ``receive_path``: ``"lean"`` or ``"aiortc"`` (default: ``CLOUDREC_RECEIVE_PATH``, else
        ``"lean"``)."""
        path = receive_path or os.environ.get("CLOUDREC_RECEIVE_PATH", "") or "lean"
        if path not in RECEIVE_PATHS:
            raise ValueError(f"receive_path must be one of {RECEIVE_PATHS}, not {path!r}")
        self.receive_path = path
        # No STUN by default: a server reachable by its host address needs none, and aiortc's
        # default (a public STUN server) stalls gathering where there is no internet.
        self._configuration = RTCConfiguration(iceServers=list(ice_servers or []))
        self._ice = IceOptions.build(announced_addresses, port_range, liveness_timeout_s)
        self._queue_size = queue_size
        self._connect_timeout_s = connect_timeout_s
        self._rooms: dict[RoomKey, _Room] = {}
        self._sessions: dict[str, _Publication] = {}
        self._epochs = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self._frames_ended: dict[str, int] = {}  # frames of ended WebRTC publications, by kind
        tap.check_internals()
        transport.check_internals()

    # -- queries -------------------------------------------------------------------------------

    def is_publishing(self, appid: int, roomid: str, *, relayed: bool = True) -> bool:
        """Whether anyone publishes in the room; ``relayed=False``: a WebRTC publisher here."""
        return bool(self.publishers(appid, roomid, relayed=relayed))

    def publishers(self, appid: int, roomid: str, *, relayed: bool = True) -> list[PublisherInfo]:
        """Publishers in join order (``info.relayed`` tells relayed ones); ``relayed=False``:
        only the WebRTC publishers received here."""
        room = self._rooms.get((appid, roomid))
        if room is None:
            return []
        return [p.info for p in room.publications.values()
                if p.info is not None and (relayed or not p.info.relayed)]

    def local_rooms(self) -> list[RoomKey]:
        """Rooms with at least one WebRTC publication received by this hub."""
        return list({pub.key for pub in self._sessions.values()})

    def publisher_count(self) -> int:
        """WebRTC publications received by this hub."""
        return len(self._sessions)

    def publications(self) -> list[dict[str, Any]]:
        """Every WebRTC publication received here, with what it sends (for operators)."""
        out = []
        for pub in self._sessions.values():
            info = pub.info
            out.append({"appid": pub.key[0], "roomid": pub.key[1], "uid": pub.uid,
                        "epoch": pub.epoch, "state": pub.pc.connectionState,
                        "kinds": sorted(info.kinds) if info else [],
                        "video_codec": info.video_codec if info else None,
                        "audio_codec": info.audio_codec if info else None,
                        "joined_at": info.joined_at if info else None,
                        **pub.stats.as_dict()})
        return out

    def frames_received(self) -> dict[str, int]:
        """Encoded frames received from WebRTC publishers since the hub began, by kind, ended
        publications included (for metrics; relayed frames count where they were received)."""
        totals = dict(self._frames_ended)
        for pub in list(self._sessions.values()):
            for kind, stats in pub.stats.kinds.items():
                totals[kind] = totals.get(kind, 0) + stats.frames
        return totals

    def read_rooms(self) -> list[RoomKey]:
        """Rooms that recordings here read (subscriptions that may ask for a relay)."""
        return [key for key, room in self._rooms.items()
                if any(sub.relay for sub in room.subscriptions)]

    def subscribe(self, appid: int, roomid: str, uid: str | None = None, *,
                  relay: bool = True) -> Subscription:
        """A subscription to the room (or one uid of it), relayed publications included.

        ``relay=False`` is for the relay server's own subscriptions: a room is relayed from the
        worker that owns it, never onward, so they never call the hooks."""
        key = (appid, roomid)
        sub = Subscription(self, key, uid, self._queue_size, relay)
        if self._closed:
            sub._end()
            return sub
        room = self._rooms.setdefault(key, _Room())
        for pub in room.publications.values():
            if uid is None or pub.uid == uid:
                sub._push_event(PublisherEvent("published", pub.uid, pub.info))
                self._request_keyframe(key, pub.uid)
        room.subscriptions.append(sub)
        if relay and not any(type(p) is _Publication for p in room.publications.values()):
            self._call_hook(self.on_room_subscribed, key)
        return sub

    # -- publishing ----------------------------------------------------------------------------

    async def publish(self, appid: int, roomid: str, uid: str, offer_sdp: str) -> tuple[str, str]:
        """Answer a WHIP offer; returns ``(answer_sdp, session_id)``.

        Raises InvalidParameter("sdp", ...) for a malformed offer, one that sends neither audio
        nor video, or one with no codec we take (H.264, VP8, Opus).
        """
        if self._closed:
            raise RuntimeError("RoomHub is closed")
        offer, kinds = _offer_kinds(offer_sdp)
        key = (appid, str(roomid))
        pc = RTCPeerConnection(self._configuration)
        pub = _Publication(key, uid, secrets.token_urlsafe(18), next(self._epochs), pc)
        try:
            transceivers = {}
            sinks = {kind: self._sink(pub, kind) for kind in kinds}
            for kind in kinds:
                transceiver = pc.addTransceiver(kind, direction="recvonly")
                transceiver.setCodecPreferences(_codec_preferences(kind))
                tap.install_tap(transceiver.receiver, _tap_callback(sinks[kind])
                                if self.receive_path == "aiortc" else _idle_tap(pub, kind))
                pub.receivers[kind] = transceiver.receiver
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
            transport.prepare(pc, self._ice)  # DTLS ciphers, ICE candidates and liveness
            if self.receive_path == "lean":
                pub.lean = _lean_receiver(transceivers, sinks)
                transport.attach_media(pc, pub.lean.port)
                pub.lean.start()
            await pc.setLocalDescription(answer)  # gathers ICE candidates first
            if self._closed:
                raise RuntimeError("RoomHub is closed")
        except BaseException:
            if pub.lean is not None:
                pub.lean.close()
            await pc.close()
            raise
        codecs = {k: tap.negotiated_codec(t) for k, t in transceivers.items()}
        self._commit(pub, frozenset(kinds), codecs)
        return pc.localDescription.sdp, pub.session_id

    async def unpublish(self, session_id: str) -> bool:
        pub = self._sessions.get(session_id)
        if pub is None:
            return False
        self._remove(pub, "unpublished")
        await pub.pc.close()
        return True

    async def close(self) -> None:
        """Close every peer connection and end every subscription."""
        self._closed = True
        pubs = list(self._sessions.values())
        for pub in pubs:
            self._remove(pub, "hub closed")
        for room in self._rooms.values():
            for sub in room.subscriptions:
                sub._end()
        self._rooms.clear()
        await asyncio.gather(*(p.pc.close() for p in pubs), return_exceptions=True)
        tasks = list(self._tasks)
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- relayed publications ------------------------------------------------------------------

    def add_relayed(self, key: RoomKey, info: PublisherInfo,
                    request_keyframe: Callable[[], None]) -> RelayedPublication:
        """Publish ``info.uid`` in room ``key`` with media that a relay brings in.

        The hub gives the publication its own epoch (epochs stay unique per hub, so a recorder
        tells it from an earlier or later publication of the uid) and marks it ``relayed``;
        frames handed to :meth:`relayed_frame` must carry ``handle.epoch``. It takes its place
        in join order by ``info.joined_at``. A relayed publication of the same uid is replaced
        and its place kept. A WebRTC publication of the uid here wins (the room has moved
        here): the handle comes back inactive and its frames are ignored.
        """
        room = self._rooms.get(key)
        old = room.publications.get(info.uid) if room is not None else None
        if self._closed or (old is not None and type(old) is not RelayedPublication):
            return RelayedPublication(key, replace(info, relayed=True), request_keyframe, False)
        room = self._rooms.setdefault(key, _Room())
        joined_at = old.info.joined_at if old is not None else info.joined_at
        pub = RelayedPublication(key, replace(info, epoch=next(self._epochs), relayed=True,
                                              joined_at=joined_at), request_keyframe)
        if old is not None:
            self._remove(old, "replaced", keep_place=True)
        later = any(p.info is not None and p.info.joined_at > joined_at
                    for p in room.publications.values())
        room.publications[pub.uid] = pub
        if later and old is None:  # keep join order when a relay (re)connects late
            ordered = sorted(room.publications.items(),
                             key=lambda item: item[1].info.joined_at if item[1].info else 0.0)
            room.publications.clear()
            room.publications.update(ordered)
        event = PublisherEvent("published", pub.uid, pub.info)
        for sub in room.subscriptions:
            if sub.uid is None or sub.uid == pub.uid:
                sub._push_event(event)
        logger.info("relayed publish %s/%s uid=%s epoch=%d kinds=%s", *key, pub.uid, pub.epoch,
                    sorted(info.kinds))
        return pub

    def relayed_frame(self, handle: RelayedPublication, frame: EncodedFrame) -> None:
        """Hand one relayed frame to the room's subscribers (per frame, on the event loop)."""
        if not handle.active:
            return
        room = self._rooms.get(handle.key)
        if room is None:
            return
        handle.frames += 1
        uid = handle.info.uid
        for sub in room.subscriptions:
            if sub.uid is None or sub.uid == uid:
                sub._push_frame(uid, frame)

    def remove_relayed(self, handle: RelayedPublication, reason: str = "relay ended") -> None:
        """End a relayed publication (idempotent): subscribers see ``unpublished``."""
        self._remove(handle, reason)  # type: ignore[arg-type]

    # -- internals -----------------------------------------------------------------------------

    @staticmethod
    def _call_hook(hook: Callable[[RoomKey], None] | None, key: RoomKey) -> None:
        if hook is None:
            return
        try:
            hook(key)
        except Exception:
            logger.exception("room hook %r failed for %s/%s", hook, *key)

    def _commit(self, pub: _Publication, kinds: frozenset[str], codecs: dict[str, Any]) -> None:
        room = self._rooms.setdefault(pub.key, _Room())
        old = room.publications.get(pub.uid)
        joined_at = old.info.joined_at if old is not None and old.info else time.time()
        if old is not None:
            self._remove(old, "replaced", keep_place=True)
        pub.info = PublisherInfo(
            uid=pub.uid,
            kinds=kinds,
            video_codec=codecs.get("video"),
            audio_codec=codecs.get("audio"),
            joined_at=joined_at,
            epoch=pub.epoch,
        )
        pub.active = True
        room.publications[pub.uid] = pub
        self._sessions[pub.session_id] = pub
        pc = pub.pc

        @pc.on("connectionstatechange")
        def _on_state() -> None:
            state = pc.connectionState
            if state == "connected" and pub.watchdog is not None:
                pub.watchdog.cancel()
                pub.watchdog = None
            elif state in ("failed", "closed"):
                self._remove(pub, f"connection {state}")

        pub.watchdog = asyncio.get_running_loop().call_later(
            self._connect_timeout_s, self._on_connect_timeout, pub
        )
        event = PublisherEvent("published", pub.uid, pub.info)
        for sub in room.subscriptions:
            if sub.uid is None or sub.uid == pub.uid:
                sub._push_event(event)
        logger.info("publish %s/%s uid=%s epoch=%d kinds=%s", *pub.key, pub.uid, pub.epoch,
                    sorted(kinds))

    def _on_connect_timeout(self, pub: _Publication) -> None:
        pub.watchdog = None
        if pub.active and pub.pc.connectionState != "connected":
            self._remove(pub, "not connected in time")

    def _remove(self, pub: _Publication, reason: str, keep_place: bool = False) -> None:
        """End a publication (idempotent); its peer connection is closed in the background."""
        if not pub.active:
            return
        pub.active = False
        if pub.watchdog is not None:
            pub.watchdog.cancel()
            pub.watchdog = None
        self._sessions.pop(pub.session_id, None)
        if isinstance(pub, _Publication) and pub.lean is not None:
            pub.lean.close()
        if isinstance(pub, _Publication):  # keep its frames in frames_received()
            for kind, stats in pub.stats.kinds.items():
                self._frames_ended[kind] = self._frames_ended.get(kind, 0) + stats.frames
        room = self._rooms.get(pub.key)
        if room is not None and room.publications.get(pub.uid) is pub:
            if not keep_place:
                del room.publications[pub.uid]
            event = PublisherEvent("unpublished", pub.uid, pub.info)
            for sub in room.subscriptions:
                if sub.uid is None or sub.uid == pub.uid:
                    sub._push_event(event)
            if not room.publications and not room.subscriptions:
                del self._rooms[pub.key]
        logger.info("unpublish %s/%s uid=%s epoch=%d: %s", *pub.key, pub.uid, pub.epoch, reason)
        self._spawn(pub.pc.close())

    def _sink(self, pub: _Publication, kind: str) -> Callable[[str, int, bytes, int], None]:
        """The per-kind callback ``(codec name, clock rate, data, unwrapped RTP timestamp)``:
        wrap each encoded frame once, hand it to subscribers."""
        uid, epoch, monotonic = pub.uid, pub.epoch, time.monotonic
        name, keyframe = "", keyframe_detector("")
        room: _Room | None = None
        # Until the first video keyframe, ask for one (at most every 0.5 s): frames lost before
        # the receiver was registered would otherwise leave subscribers waiting a whole GOP.
        need_key, asked_at = kind == "video", -1.0

        def on_frame(codec: str, clock_rate: int, data: bytes, timestamp: int) -> None:
            nonlocal name, keyframe, room, need_key, asked_at
            if not pub.active:
                return
            if codec != name:
                name = codec
                keyframe = keyframe_detector(name)
            if room is None:
                room = self._rooms.get(pub.key)
                if room is None:
                    return
            now = monotonic()
            pub.frames += 1
            pub.last_arrival = now
            is_key = keyframe(data)
            pub.stats.add(kind, name, data, is_key, now)
            if need_key:
                if is_key:
                    need_key = False
                elif now - asked_at > 0.5:
                    asked_at = now
                    self._request_keyframe(pub.key, uid)
            subs = room.subscriptions
            if not subs:
                return
            frame = EncodedFrame(kind, name, data, timestamp, clock_rate, now, is_key, epoch)
            for sub in subs:
                if sub.uid is None or sub.uid == uid:
                    sub._push_frame(uid, frame)

        return on_frame

    def _request_keyframe(self, key: RoomKey, uid: str) -> None:
        room = self._rooms.get(key)
        pub = room.publications.get(uid) if room is not None else None
        if type(pub) is RelayedPublication:
            if pub.active:
                pub.request_keyframe()
            return
        if pub is None or not pub.active or "video" not in pub.receivers:
            return
        if pub.lean is not None and pub.lean.request_keyframe():
            return
        self._spawn(tap.request_keyframe(pub.receivers["video"]))

    def _drop_subscription(self, sub: Subscription) -> None:
        room = self._rooms.get(sub._key)
        if room is None:
            return
        try:
            room.subscriptions.remove(sub)
        except ValueError:
            return
        if not room.publications and not room.subscriptions:
            del self._rooms[sub._key]
        if sub.relay and not any(s.relay for s in room.subscriptions):
            self._call_hook(self.on_room_unsubscribed, sub._key)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.warning("room task failed: %r", task.exception())


def _tap_callback(sink: Callable[[str, int, bytes, int], None]) -> tap.FrameCallback:
    """aiortc's ``(codec, JitterFrame)`` to the sink's plain arguments."""

    def on_frame(codec: Any, jitter_frame: Any) -> None:
        sink(codec.name.lower(), codec.clockRate, jitter_frame.data, jitter_frame.timestamp)

    return on_frame


def _idle_tap(pub: _Publication, kind: str) -> tap.FrameCallback:
    """aiortc's receiver on the lean path: it gets no SRTP, so no frames; should one come, it
    is dropped (and said once) rather than mixed with the lean path's on another clock."""
    said = False

    def on_frame(codec: Any, jitter_frame: Any) -> None:
        nonlocal said
        if not said:
            said = True
            logger.warning("%s/%s uid=%s: a %s frame came through aiortc's receiver on the lean "
                           "path; dropped", *pub.key, pub.uid, kind)

    return on_frame


def _lean_receiver(transceivers: dict[str, Any],
                   sinks: dict[str, Callable[[str, int, bytes, int], None]]) -> LeanReceiver:
    """A lean receiver for what the answer negotiated, feeding the same sinks as the tap."""
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

    def on_frame(kind: str, name: str, clock_rate: int, data: bytes, timestamp: int) -> None:
        sink = sinks.get(kind)
        if sink is not None:
            sink(name, clock_rate, data, timestamp)

    return LeanReceiver(codecs, on_frame, rtcp_ssrc=rtcp_ssrc, abs_send_time_id=abs_send_time,
                        remb=remb)
