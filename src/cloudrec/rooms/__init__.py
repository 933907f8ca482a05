"""The room plane: WHIP ingest, publish tokens, presence, and encoded media per (room, uid).

Recorders use :class:`RoomHub` (``is_publishing``, ``publishers``, ``subscribe``) and get
:class:`~cloudrec.mediatypes.EncodedFrame` objects: H.264 access units, VP8 frames and Opus
packets, never decoded. The one module that reaches into aiortc internals is ``_aiortc_tap``.
Publications of rooms owned by another worker come in over :mod:`cloudrec.relay` as
:class:`RelayedPublication`.
"""

from cloudrec.rooms.hub import (
    PublisherEvent,
    PublisherInfo,
    RelayedPublication,
    RoomHub,
    Subscription,
    SubscriptionClosed,
)
from cloudrec.rooms.tokens import make_token, verify_token
from cloudrec.rooms.whip import whip_router

__all__ = [
    "PublisherEvent",
    "PublisherInfo",
    "RelayedPublication",
    "RoomHub",
    "Subscription",
    "SubscriptionClosed",
    "make_token",
    "verify_token",
    "whip_router",
]
