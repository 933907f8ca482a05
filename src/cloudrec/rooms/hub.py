"""Rooms keyed by ``(appid, roomid)``: who publishes in each, and the readers that subscribe.

A publisher of any kind enters a room with :meth:`RoomHub.attach` and writes frames into the
:class:`~cloudrec.rooms.publication.Publication` it gets; it leaves with :meth:`RoomHub.detach`
(or the hub ends it). Readers subscribe (:meth:`RoomHub.subscribe`) and get presence events and
:class:`~cloudrec.mediatypes.EncodedFrame` objects, whoever published them. Nothing is decoded
and no thread is involved. The WebRTC publisher is :mod:`cloudrec.webrtc.ingest`; relayed
publications come from :mod:`cloudrec.relay.links`.

Presence: a uid publishes at most one audio and one video track; a second publication of the
same uid replaces the first (the old one's upstream is closed, subscribers see ``unpublished``
then ``published`` with a new ``epoch``) and keeps the uid's place in join order and its
``joined_at``. A relayed publication never replaces one received here (the room has moved
here): it comes back inactive and its frames are ignored.

Relayed publications: a room lives on one worker; another worker that records it gets its
publications over :mod:`cloudrec.relay` (``origin="relay"``). They sit in the room beside the
others, so subscribers see the same events and frames, and keyframe requests go upstream over
the relay. Their infos say ``relayed=True``, and ``is_publishing``/``publishers`` take
``relayed=False`` to ask about the publishers received here only. The hooks
:attr:`RoomHub.on_room_subscribed` and :attr:`RoomHub.on_room_unsubscribed` let the wiring open
and release relays as recordings come and go.
"""

from __future__ import annotations

import functools
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any

from cloudrec.rooms.publication import Publication, Room, Upstream
from cloudrec.rooms.subscription import (
    PublisherEvent,
    PublisherInfo,
    RoomKey,
    Subscription,
    SubscriptionClosed,
)

__all__ = ["PublisherEvent", "PublisherInfo", "RoomHub", "Subscription", "SubscriptionClosed"]

logger = logging.getLogger(__name__)

RELAY = "relay"  # the origin of publications that a relay brings in


class RoomHub:
    """Rooms keyed by ``(appid, roomid)``: publications in, encoded media out to subscribers."""

    #: Called with a room's key when a subscription (``relay=True``) is made to a room that has
    #: no publication received here: the wiring may open a relay from the room's owner.
    on_room_subscribed: Callable[[RoomKey], None] | None = None
    #: Called with a room's key when its last ``relay=True`` subscription ends: the wiring may
    #: release the relay.
    on_room_unsubscribed: Callable[[RoomKey], None] | None = None
    #: Called with ``("published" | "unpublished", publication, replaced)`` when a publication
    #: received here (not relayed) enters or leaves its room; ``replaced``: it left for a new
    #: publication of the same uid. The auto-record rules watch presence with it.
    on_presence: Callable[[str, Publication, bool], None] | None = None

    def __init__(self, *, queue_size: int = 512) -> None:
        """``queue_size``: the bound of each subscription's queue, in frames."""
        self._queue_size = queue_size
        self._rooms: dict[RoomKey, Room] = {}
        self._local: dict[Publication, None] = {}  # active publications received here
        self._epochs = itertools.count(1)
        self._closed = False
        self._frames_ended: dict[str, int] = {}  # frames of ended local publications, by kind

    @property
    def closed(self) -> bool:
        return self._closed

    # -- queries -------------------------------------------------------------------------------

    def is_publishing(self, appid: int, roomid: str, *, relayed: bool = True) -> bool:
        """Whether anyone publishes in the room; ``relayed=False``: a publisher received here."""
        return bool(self.publishers(appid, roomid, relayed=relayed))

    def publishers(self, appid: int, roomid: str, *, relayed: bool = True) -> list[PublisherInfo]:
        """Publishers in join order (``info.relayed`` tells relayed ones); ``relayed=False``:
        only the publishers received here."""
        room = self._rooms.get((appid, roomid))
        if room is None:
            return []
        return [p.info for p in room.publications.values() if relayed or not p.info.relayed]

    def local_rooms(self) -> list[RoomKey]:
        """Rooms with at least one publication received by this hub (not relayed)."""
        return list({pub.key for pub in self._local})

    def publisher_count(self) -> int:
        """Publications received by this hub (not relayed)."""
        return len(self._local)

    def publications(self) -> list[dict[str, Any]]:
        """Every publication received here, with what it sends (for operators)."""
        out = []
        for pub in self._local:
            info = pub.info
            out.append({"appid": pub.key[0], "roomid": pub.key[1], "uid": pub.uid,
                        "epoch": pub.epoch, "state": pub.upstream.state, "origin": pub.origin,
                        "kinds": sorted(info.kinds), "video_codec": info.video_codec,
                        "audio_codec": info.audio_codec, "joined_at": info.joined_at,
                        **pub.stats.as_dict()})
        return out

    def frames_received(self) -> dict[str, int]:
        """Encoded frames received here since the hub began, by kind, ended publications
        included (for metrics; relayed frames count where they were received)."""
        totals = dict(self._frames_ended)
        for pub in list(self._local):
            for kind, stats in pub.stats.kinds.items():
                totals[kind] = totals.get(kind, 0) + stats.frames
        return totals

    def read_rooms(self) -> list[RoomKey]:
        """Rooms that recordings here read (subscriptions that may ask for a relay)."""
        return [key for key, room in self._rooms.items()
                if any(sub.relay for sub in room.subscriptions)]

    # -- readers -------------------------------------------------------------------------------

    def subscribe(self, appid: int, roomid: str, uid: str | None = None, *,
                  relay: bool = True) -> Subscription:
        """A subscription to the room (or one uid of it), relayed publications included.

        ``relay=False`` is for the relay server's own subscriptions: a room is relayed from the
        worker that owns it, never onward, so they never call the hooks."""
        key = (appid, roomid)
        sub = Subscription(key, uid, self._queue_size, relay,
                           request_keyframe=functools.partial(self._request_keyframe, key),
                           on_close=self._unsubscribed)
        if self._closed:
            sub.end()
            return sub
        room = self._rooms.setdefault(key, Room())
        for pub in room.publications.values():
            if uid is None or pub.uid == uid:
                sub.push_event(PublisherEvent("published", pub.uid, pub.info))
                self._request_keyframe(key, pub.uid)
        room.subscriptions.append(sub)
        if relay and all(p.relayed for p in room.publications.values()):
            self._call_hook(self.on_room_subscribed, key)
        return sub

    # -- publishers ----------------------------------------------------------------------------

    def attach(self, appid: int, roomid: str, uid: str, *, kinds: frozenset[str],
               codecs: dict[str, str | None], upstream: Upstream, origin: str,
               joined_at: float | None = None, sender_clock: bool = False) -> Publication:
        """Publish ``uid`` in room ``(appid, roomid)``: the publication counts from now.

        ``codecs`` maps a kind to its lower-case codec name; ``upstream`` gets the keyframe
        requests and is closed when the publication ends. The hub gives the publication its
        own epoch (unique per hub, so a recorder tells it from an earlier or later publication
        of the uid). A uid that joined before keeps its place and ``joined_at``; otherwise
        ``joined_at`` (given for a relayed publication: when it joined on its owner) places it
        in join order, and defaults to now. ``origin="relay"`` marks it relayed; it comes back
        inactive when the hub is closed or a publication received here holds the uid.
        ``sender_clock``: its frames will carry capture times from sender reports
        (``PublisherInfo.sender_clock``).
        """
        key = (appid, str(roomid))
        relayed = origin == RELAY
        room = self._rooms.get(key)
        old = room.publications.get(uid) if room is not None else None
        if old is not None:
            joined = old.info.joined_at
        else:
            joined = joined_at if joined_at is not None else time.time()
        refused = self._closed or (relayed and old is not None and not old.relayed)
        info = PublisherInfo(uid=uid, kinds=kinds, video_codec=codecs.get("video"),
                             audio_codec=codecs.get("audio"), joined_at=joined,
                             epoch=0 if refused else next(self._epochs), relayed=relayed,
                             sender_clock=sender_clock)
        if refused:
            return Publication(key, info, origin, upstream, None)
        epoch = info.epoch
        room = self._rooms.setdefault(key, Room())
        pub = Publication(key, info, origin, upstream, room)
        if old is not None:
            self.detach(old, "replaced", keep_place=True)
        later = joined_at is not None and old is None and any(
            p.info.joined_at > info.joined_at for p in room.publications.values())
        room.publications[uid] = pub
        if later:  # keep join order when a relay (re)connects late
            ordered = sorted(room.publications.items(), key=lambda item: item[1].info.joined_at)
            room.publications.clear()
            room.publications.update(ordered)
        if not relayed:
            self._local[pub] = None
        event = PublisherEvent("published", uid, info)
        for sub in room.subscriptions:
            if sub.uid is None or sub.uid == uid:
                sub.push_event(event)
        logger.info("%s publish %s/%s uid=%s epoch=%d kinds=%s", origin, *key, uid, epoch,
                    sorted(kinds))
        if not relayed:
            self._presence("published", pub, False)
        return pub

    def detach(self, pub: Publication, reason: str, *, keep_place: bool = False) -> None:
        """End a publication (idempotent): subscribers see ``unpublished``, its upstream is
        closed. ``keep_place``: the uid's place in join order stays for its replacement."""
        if not pub.active:
            return
        pub.active = False
        if not pub.relayed:  # keep its frames in frames_received()
            self._local.pop(pub, None)
            for kind, stats in pub.stats.kinds.items():
                self._frames_ended[kind] = self._frames_ended.get(kind, 0) + stats.frames
        room = self._rooms.get(pub.key)
        if room is not None and room.publications.get(pub.uid) is pub:
            if not keep_place:
                del room.publications[pub.uid]
            event = PublisherEvent("unpublished", pub.uid, pub.info)
            for sub in room.subscriptions:
                if sub.uid is None or sub.uid == pub.uid:
                    sub.push_event(event)
            if not room.publications and not room.subscriptions:
                del self._rooms[pub.key]
        logger.info("unpublish %s/%s uid=%s epoch=%d: %s", *pub.key, pub.uid, pub.epoch, reason)
        if not pub.relayed:
            self._presence("unpublished", pub, keep_place)
        try:
            pub.upstream.close()
        except Exception:
            logger.exception("closing the upstream of %s/%s uid=%s failed", *pub.key, pub.uid)

    async def close(self) -> None:
        """End every publication received here and every subscription; later publications
        come back inactive (relayed ones end with their relay)."""
        self._closed = True
        for pub in list(self._local):
            self.detach(pub, "hub closed")
        for room in self._rooms.values():
            for sub in room.subscriptions:
                sub.end()
        self._rooms.clear()

    # -- internals -----------------------------------------------------------------------------

    @staticmethod
    def _call_hook(hook: Callable[[RoomKey], None] | None, key: RoomKey) -> None:
        if hook is None:
            return
        try:
            hook(key)
        except Exception:
            logger.exception("room hook %r failed for %s/%s", hook, *key)

    def _presence(self, event: str, pub: Publication, replaced: bool) -> None:
        if self.on_presence is None:
            return
        try:
            self.on_presence(event, pub, replaced)
        except Exception:
            logger.exception("presence hook failed for %s/%s uid=%s", *pub.key, pub.uid)

    def _request_keyframe(self, key: RoomKey, uid: str) -> None:
        room = self._rooms.get(key)
        pub = room.publications.get(uid) if room is not None else None
        if pub is not None:
            pub.request_keyframe()

    def _unsubscribed(self, sub: Subscription) -> None:
        room = self._rooms.get(sub.key)
        if room is None:
            return
        try:
            room.subscriptions.remove(sub)
        except ValueError:
            return
        if not room.publications and not room.subscriptions:
            del self._rooms[sub.key]
        if sub.relay and not any(s.relay for s in room.subscriptions):
            self._call_hook(self.on_room_unsubscribed, sub.key)
