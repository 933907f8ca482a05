"""The room plane: presence, and one interface for what enters and leaves a room.

- A publisher is anything that writes encoded frames into (room, uid): it calls
  :meth:`RoomHub.attach` and writes into the :class:`Publication` it gets
  (:mod:`cloudrec.webrtc.ingest` for WebRTC peers, :mod:`cloudrec.relay.links` for rooms owned
  by another worker). Keyframe requests travel back through its :class:`Upstream`.
- A reader is anything that consumes them (recordings, relays): it holds a
  :class:`Subscription` from :meth:`RoomHub.subscribe` and gets presence events and
  :class:`~cloudrec.mediatypes.EncodedFrame` objects (H.264 access units, VP8 frames, Opus
  packets, never decoded), whoever published them.

Modules: :mod:`~cloudrec.rooms.hub` (rooms, attach/detach, subscribe, queries),
:mod:`~cloudrec.rooms.publication` (the per-frame path), :mod:`~cloudrec.rooms.subscription`
(a reader's bounded queue), :mod:`~cloudrec.rooms.stats` (what a publication sends).
"""

from cloudrec.rooms.hub import RoomHub
from cloudrec.rooms.publication import Publication, Upstream
from cloudrec.rooms.subscription import (
    PublisherEvent,
    PublisherInfo,
    RoomKey,
    Subscription,
    SubscriptionClosed,
)

__all__ = [
    "Publication",
    "PublisherEvent",
    "PublisherInfo",
    "RoomHub",
    "RoomKey",
    "Subscription",
    "SubscriptionClosed",
    "Upstream",
]
