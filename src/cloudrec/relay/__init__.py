"""Encoded media between workers and nodes, never decoded.

A room lives on one worker. A recording elsewhere that needs it asks :class:`RelayLinks` to
``ensure`` a link to the owner's :class:`RelayServer`; the owner's publications are then
attached to the local :class:`~cloudrec.rooms.RoomHub` as relayed publications
(``origin="relay"``), and recorders subscribe to them as to local ones. The relay server is a
reader of its hub like a recording. The wire format is in :mod:`cloudrec.relay.wire`.
"""

from cloudrec.relay.links import RelayLink, RelayLinks
from cloudrec.relay.server import RelayServer
from cloudrec.relay.stats import RelayStats
from cloudrec.relay.wire import RelayError, RelayRefused

__all__ = ["RelayError", "RelayLink", "RelayLinks", "RelayRefused", "RelayServer", "RelayStats"]
