"""What every push listener shares: the handler interface, the connection object, stream names.

A listener (:class:`~cloudrec.ingest.rtmp.RtmpServer`, :class:`~cloudrec.ingest.srt.SrtServer`)
accepts publishers and reports to one :class:`IngestHandler`:

1. ``await handler.authorize(appid, roomid, uid, token)`` before anything is accepted; raising
   refuses the publisher (the client sees an error and gives up; a WARNING names app/room/uid);
2. ``handler.started(conn)`` once the publisher is accepted;
3. ``handler.data(conn, chunk)`` for the publisher's media as a byte stream in ``conn.fmt``;
4. ``handler.ended(conn, reason)`` exactly once after ``started``, whatever ends the connection.

``started``, ``data`` and ``ended`` are plain functions called on the event loop thread, in
order, never concurrently. An exception from one of them closes that connection (and is logged);
it never reaches the listener. ``conn.close()`` lets the handler drop a publisher itself.

The byte stream: ``"flv"`` from RTMP (an FLV header, then the publisher's audio and video
messages as FLV tags, timestamps as sent), ``"mpegts"`` from SRT (the payload as received).
The listeners never parse media: the worker that owns the room demuxes the stream
(:mod:`cloudrec.ingest.flv`, :mod:`cloudrec.ingest.demux`), so this side loads no media library.
"""

from __future__ import annotations

import itertools
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol
from urllib.parse import parse_qs

__all__ = ["ContainerClock", "FLV_HEADER", "IngestConnection", "IngestHandler", "IngestRefused",
           "StreamName", "Timeline", "flv_tag", "flv_tag_parts", "parse_rtmp_name",
           "parse_srt_streamid"]

Transport = Literal["rtmp", "srt"]
#: An FLV file header (audio and video present) and the first PreviousTagSize.
FLV_HEADER = b"FLV\x01\x05\x00\x00\x00\x09" + bytes(4)
_epochs = itertools.count(1)


class IngestRefused(Exception):
    """A publisher that may not publish: a bad stream name, or a token ``authorize`` refused."""


@dataclass(frozen=True, slots=True)
class StreamName:
    """Who publishes, as the stream name says."""

    appid: int
    roomid: str
    uid: str
    token: str


@dataclass(eq=False)
class IngestConnection:
    """One accepted publisher; ``fmt`` is its byte stream's format, ``flv`` or ``mpegts``."""

    transport: Transport
    appid: int
    roomid: str
    uid: str
    peer: str
    fmt: str = "flv"
    epoch: int = field(default_factory=lambda: next(_epochs))
    since: float = field(default_factory=time.time)
    metadata: dict[str, object] = field(default_factory=dict)  # RTMP onMetaData, as sent
    bytes_in: int = 0
    _closer: Callable[[str], None] | None = field(default=None, repr=False)

    def close(self, reason: str = "closed by server") -> None:
        """Drops the publisher; ``ended`` follows with this reason. Safe to call twice."""
        if self._closer is not None:
            self._closer(reason)


class IngestHandler(Protocol):
    """What a listener reports to; the room plane implements it."""

    async def authorize(self, appid: int, roomid: str, uid: str, token: str) -> None:
        """Returns to accept the publisher; raises (any exception, its text is the reason)."""

    def started(self, conn: IngestConnection) -> None:
        """A publisher was accepted; frames follow."""

    def data(self, conn: IngestConnection, chunk: bytes) -> None:
        """The next bytes of ``conn``'s stream."""

    def ended(self, conn: IngestConnection, reason: str) -> None:
        """``conn`` is gone: ``"unpublished"``, ``"closed"``, an error, or a ``close`` reason."""


def _split_path(path: str, token: str) -> StreamName:
    parts = path.strip("/").split("/")
    if len(parts) != 3 or not all(parts):
        raise IngestRefused(f"stream name {path!r} is not {{appid}}/{{roomid}}/{{uid}}")
    appid, roomid, uid = parts
    if not appid.isdigit() or len(appid) > 18:
        raise IngestRefused(f"appid {appid!r} is not a number")
    return StreamName(int(appid), roomid, uid, token)


def parse_rtmp_name(app: str, name: str) -> StreamName:
    """The publisher of an RTMP ``connect`` app plus ``publish`` name.

    ``rtmp://H/live/{appid}/{roomid}/{uid}?token=T`` arrives as app ``live`` and name
    ``{appid}/{roomid}/{uid}?token=T`` (OBS's server + stream key) or, from FFmpeg, as app
    ``live/{appid}`` and name ``{roomid}/{uid}?token=T``; either way they join into one path.
    """
    app, _, app_query = app.partition("?")
    name, _, name_query = name.partition("?")
    path = f"{app.strip('/')}/{name.strip('/')}"
    if not path.startswith("live/"):
        raise IngestRefused(f"RTMP app {app!r} is not 'live'")
    query = parse_qs(app_query) | parse_qs(name_query)
    return _split_path(path[len("live/"):], (query.get("token") or [""])[0])


def parse_srt_streamid(streamid: str) -> StreamName:
    """The publisher of an SRT ``streamid``: ``publish:{appid}/{roomid}/{uid}:{token}``."""
    mode, sep, rest = streamid.partition(":")
    if not sep or mode != "publish":
        raise IngestRefused(f"streamid {streamid[:80]!r} is not publish:{{appid}}/{{roomid}}/"
                            "{uid}:{token}")
    path, _, token = rest.rpartition(":")
    if not path:
        path, token = rest, ""
    return _split_path(path, token)


def flv_tag(tag_type: int, timestamp_ms: int, body: bytes) -> bytes:
    """One FLV tag (8 audio, 9 video) with its PreviousTagSize."""
    return b"".join(flv_tag_parts(tag_type, timestamp_ms, body))


def flv_tag_parts(tag_type: int, timestamp_ms: int, body: bytes) -> tuple[bytes, bytes, bytes]:
    """:func:`flv_tag` as (header, body, trailer), to be joined with others without copying
    the body twice."""
    ts = timestamp_ms & 0xFFFFFFFF
    size = len(body)
    header = struct.pack(">I3sB3x", (tag_type << 24) | size, (ts & 0xFFFFFF).to_bytes(3, "big"),
                         ts >> 24)
    return header, body, (size + 11).to_bytes(4, "big")


class Timeline:
    """Timestamps counted from the connection's first media, one origin for every kind.

    ``at(t, rate)`` takes a container time ``t`` (in ``1/unit`` seconds) and returns it in
    ``rate`` units from the origin, never below 0 (the other kind may begin a little earlier).
    Video timestamps are presentation times: a stream with B-frames gives them out of order.
    """

    def __init__(self, unit: int) -> None:
        self.unit = unit
        self.origin: int | None = None

    def at(self, t: int, rate: int) -> int:
        if self.origin is None:
            self.origin = t
        return max(0, (t - self.origin) * rate // self.unit)


class ContainerClock:
    """An ingested publication's capture clock: its container's timestamps, one timeline for
    every kind (:class:`Timeline`), given to the publication as a sender clock
    (:meth:`~cloudrec.rooms.publication.Publication.set_sender_clock`, what RTCP sender reports
    give a WebRTC publisher), anchored on the first frame's arrival (its first :meth:`check`).
    Readers then keep audio where the video of the same time is, however the container
    interleaves them: FFmpeg's MPEG-TS muxer sends AAC ~0.3 s after the video of its time, which
    placing each track by its arrival turned into audio 0.3 s late.

    A timeline that falls behind arrival by more than :data:`JUMP_S` (timestamps that went
    back, or a stall that long) is given up: the publication's frames carry no capture time
    from then on and readers place them by arrival, as before."""

    JUMP_S = 5.0
    __slots__ = ("pub", "kinds", "least", "on")

    def __init__(self, pub: Any, kinds: frozenset[str]) -> None:
        self.pub, self.kinds = pub, kinds
        self.least: float | None = None  # monotonic time of timestamp 0, least delayed
        self.on = True

    def check(self, timestamp: int, rate: int, arrival: float) -> None:
        """One frame's time against its arrival (before it is written); the first anchors the
        clock."""
        if not self.on:
            return
        lag = arrival - timestamp / rate
        if self.least is None:
            self.least = lag
            wall0 = time.time() - time.monotonic() + lag
            for kind in self.kinds:
                self.pub.set_sender_clock(kind, wall0)
        elif lag < self.least:
            self.least = lag
        elif lag > self.least + self.JUMP_S:
            self.on = False
            for kind in self.kinds:
                self.pub.set_sender_clock(kind, None)
