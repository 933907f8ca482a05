"""The receiving end: links that bring rooms owned elsewhere into the local :class:`RoomHub`.

Shaped after mediasoup's ``Router.pipeToRouter``: one cached link per (address, room), and the
*pending* connection is what is cached, so concurrent :meth:`RelayLinks.ensure` calls share one
connection attempt and its outcome. The remote publications are attached to the hub like any
publisher's (:meth:`RoomHub.attach` with ``origin="relay"``, a :class:`RelayUpstream` as
upstream) under the same uids, so recordings subscribe as they would to a local room; their
keyframe requests go upstream over the link; an unpublish upstream unpublishes here.

A link whose first connection fails raises from ``ensure`` and is forgotten (the next
``ensure`` tries afresh). A link that drops after that reports its uids unpublished at once and
reconnects with exponential backoff (``backoff_s``: first and longest delay, with jitter) until
it is released; after a reconnect the uids are published again under new epochs, which
recorders treat as a new publication after a gap.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import random
import secrets
import time
from collections.abc import Callable

from cloudrec.mediatypes import EncodedFrame, Kind
from cloudrec.relay.stats import RelayStats
from cloudrec.relay.wire import (
    AUTH,
    ERROR,
    FLAG_KEY,
    FLAG_WALL,
    FRAME,
    FRAME_FIELDS,
    HELLO,
    KEYFRAME,
    MAX_HANDSHAKE,
    MAX_MESSAGE,
    NONCE_BYTES,
    OK,
    PING,
    PREFIX,
    PUBLISHED,
    SLOT,
    STREAM,
    UNPUBLISHED,
    VERSION,
    WALL,
    RelayError,
    RelayRefused,
    client_mac,
    message,
    read_message,
    secret_bytes,
    server_mac,
)
from cloudrec.rooms.hub import RoomHub
from cloudrec.rooms.publication import Publication
from cloudrec.rooms.subscription import RoomKey

log = logging.getLogger(__name__)


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) → ``(host, port)``."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"relay address must be host:port, not {address!r}")
    return host.strip("[]"), int(port)


class RelayUpstream:
    """The upstream of a publication that a relay link brings in: keyframe requests go back
    over the link. Closing it does nothing: the link sees the publication inactive and stops
    feeding it."""

    __slots__ = ("_ask",)

    state = "connected"

    def __init__(self, ask_keyframe: Callable[[], None]) -> None:
        self._ask = ask_keyframe

    def request_keyframe(self) -> None:
        self._ask()

    def close(self) -> None:
        pass


class RelayLinks:
    """The relay links of one worker: ``ensure`` one per recorded remote room, ``release`` it
    when its last recording ends (the hub's ``on_room_subscribed``/``on_room_unsubscribed``)."""

    def __init__(self, hub: RoomHub, secret: str | bytes, *, heartbeat_s: float = 1.0,
                 timeout_s: float = 5.0, backoff_s: tuple[float, float] = (0.1, 5.0)) -> None:
        self.hub = hub
        self.heartbeat_s, self.timeout_s = heartbeat_s, timeout_s
        self.backoff_s = backoff_s
        self._secret = secret_bytes(secret)
        self._links: dict[tuple[str, RoomKey], RelayLink] = {}
        self._released = RelayStats()  # counters of links already closed

    async def ensure(self, appid: int, roomid: str, address: str) -> RelayLink:
        """The link relaying room ``(appid, roomid)`` from the relay server at ``address``, once
        it is connected and authenticated. Raises :class:`RelayRefused` on a wrong secret,
        ``OSError``/``TimeoutError``/:class:`RelayError` when the first connection fails, and
        :class:`RelayError` when the link is released while connecting."""
        cache_key = (address, (appid, str(roomid)))
        link = self._links.get(cache_key)
        if link is None:
            split_address(address)  # a malformed address fails here, not in the background
            link = self._links[cache_key] = RelayLink(self, address, cache_key[1])
        try:
            await asyncio.shield(link.ready)
        except Exception:
            if self._links.get(cache_key) is link:
                self._forget(cache_key)
            raise
        return link

    def release(self, appid: int, roomid: str, address: str | None = None) -> None:
        """Close the room's links (only the one from ``address`` if given): its relayed uids are
        unpublished at once; pending ``ensure`` calls raise :class:`RelayError`."""
        key = (appid, str(roomid))
        for cache_key in [k for k in self._links if k[1] == key
                          and (address is None or k[0] == address)]:
            self._forget(cache_key)

    async def close(self) -> None:
        links = list(self._links.values())
        for cache_key in list(self._links):
            self._forget(cache_key)
        await asyncio.gather(*(link.wait_closed() for link in links))

    @property
    def links(self) -> list[RelayLink]:
        return list(self._links.values())

    @property
    def addresses(self) -> dict[RoomKey, list[str]]:
        """The addresses each relayed room comes from (normally one)."""
        out: dict[RoomKey, list[str]] = {}
        for address, key in self._links:
            out.setdefault(key, []).append(address)
        return out

    @property
    def stats(self) -> RelayStats:
        """Totals over every link since start, released ones included."""
        total = RelayStats()
        total.add(self._released)
        for link in self._links.values():
            total.add(link.stats)
        return total

    def _forget(self, cache_key: tuple[str, RoomKey]) -> None:
        link = self._links.pop(cache_key)
        link.close()
        self._released.add(link.stats)


class RelayLink:
    """One room relayed from one address. Made by :meth:`RelayLinks.ensure`."""

    def __init__(self, owner: RelayLinks, address: str, key: RoomKey) -> None:
        self.address, self.key = address, key
        self.stats = RelayStats()
        self.connected = False
        self._owner = owner
        self._hub = owner.hub
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._writer: asyncio.StreamWriter | None = None
        self._pubs: dict[str, tuple[int, Publication]] = {}  # uid → (remote epoch, here)
        self._slots: dict[int, tuple[Publication | None, Kind, str, int]] = {}
        self._last_rx = 0.0
        self._closed = False
        self._task = asyncio.create_task(self._run())

    @property
    def uids(self) -> list[str]:
        return list(self._pubs)

    def close(self) -> None:
        """Stop for good (synchronous, so a hub hook can call it): unpublish, drop the socket."""
        if self._closed:
            return
        self._closed = True
        self._task.cancel()
        if self._writer is not None:
            self._writer.transport.abort()
        self._unpublish_all("relay released")
        self._settle(RelayError(f"relay of {self.key[0]}/{self.key[1]} released"))

    async def wait_closed(self) -> None:
        await asyncio.gather(self._task, return_exceptions=True)

    # -- connecting -----------------------------------------------------------------------------

    async def _run(self) -> None:
        first, longest = self._owner.backoff_s
        delay = first
        while not self._closed:
            try:
                reader, writer = await self._connect()
            except (RelayError, OSError, EOFError, TimeoutError) as exc:
                if not self.ready.done():
                    self._settle(exc)
                    return
                if isinstance(exc, RelayRefused):
                    self.stats.refused += 1
                log.warning("relay of %s/%s from %s: reconnect failed (%r)", *self.key,
                            self.address, exc)
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, longest)
                continue
            delay = first
            self.connected = True
            self.stats.connections += 1
            self._settle(None)
            try:
                await self._serve(reader, writer)
            except (RelayError, OSError, EOFError) as exc:
                log.warning("relay of %s/%s from %s dropped (%r)", *self.key, self.address, exc)
            finally:
                self.connected = False
                self._writer = None
                writer.transport.abort()
                self._unpublish_all("relay link lost")
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))

    def _settle(self, exc: BaseException | None) -> None:
        if self.ready.done():
            return
        if exc is None:
            self.ready.set_result(None)
        else:
            self.ready.set_exception(exc)
            self.ready.exception()  # retrieved: every ensure() awaiting it raises it anyway

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        host, port = split_address(self.address)
        timeout = self._owner.timeout_s
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        try:
            await asyncio.wait_for(self._handshake(reader, writer), timeout)
        except BaseException:
            writer.transport.abort()
            raise
        return reader, writer

    async def _handshake(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        secret = self._owner._secret
        kind, body = await read_message(reader, MAX_HANDSHAKE)
        if kind != HELLO or len(body) != 1 + NONCE_BYTES or body[0] != VERSION:
            raise RelayError(f"{self.address} is not a cloudrec relay of version {VERSION}")
        server_nonce, client_nonce = body[1:], secrets.token_bytes(NONCE_BYTES)
        request = json.dumps({"appid": self.key[0], "roomid": self.key[1]}).encode()
        writer.write(message(AUTH, client_nonce
                             + client_mac(secret, server_nonce, client_nonce, request) + request))
        kind, body = await read_message(reader, MAX_HANDSHAKE)
        if kind == ERROR:
            raise RelayRefused(f"{self.address} refused: {body.decode(errors='replace')}")
        if kind != OK or not hmac.compare_digest(
                body, server_mac(secret, server_nonce, client_nonce)):
            raise RelayRefused(f"{self.address} did not prove it knows the secret")

    # -- relaying -------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._last_rx = time.monotonic()
        beat = asyncio.create_task(self._heartbeat(writer))
        readexactly, monotonic = reader.readexactly, time.monotonic
        prefix, fields_of, wall_of = PREFIX.unpack, FRAME_FIELDS.unpack, WALL.unpack
        slots, stats = self._slots, self.stats
        try:
            while True:
                length, kind = prefix(await readexactly(5))
                now = self._last_rx = monotonic()
                if not 1 <= length <= MAX_MESSAGE:
                    raise RelayError(f"message of {length} bytes refused")
                stats.bytes += length + 4
                if kind != FRAME:
                    self._control(kind, await readexactly(length - 1))
                    continue
                if length < 16:
                    raise RelayError("short frame message")
                slot, flags, timestamp, age_us = fields_of(await readexactly(15))
                wallclock = None
                if flags & FLAG_WALL:
                    if length < 24:
                        raise RelayError("short frame message")
                    (wallclock,) = wall_of(await readexactly(8))
                    length -= 8
                data = await readexactly(length - 16)
                handle, media, codec, clock_rate = slots.get(slot) or (None, "audio", "", 0)
                if handle is None or not handle.active:
                    continue  # a stale slot (the uid republished meanwhile)
                frame = EncodedFrame(media, codec, data, timestamp, clock_rate,
                                     now - age_us * 1e-6, bool(flags & FLAG_KEY), handle.epoch,
                                     wallclock)
                handle.forward(frame)
                stats.frames += 1
        finally:
            beat.cancel()

    def _control(self, kind: int, body: bytes) -> None:
        if kind == PING:
            return
        if kind == STREAM:
            (slot,) = SLOT.unpack_from(body)
            d = json.loads(body[SLOT.size:])
            entry = self._pubs.get(d["uid"])
            handle = entry[1] if entry is not None and entry[0] == d["epoch"] else None
            media: Kind = "video" if d["kind"] == "video" else "audio"
            self._slots[slot] = (handle, media, d["codec"], int(d["clock_rate"]))
        elif kind == PUBLISHED:
            d = json.loads(body)
            uid = d["uid"]
            handle = self._hub.attach(
                *self.key, uid, kinds=frozenset(d["kinds"]),
                codecs={"video": d["video_codec"], "audio": d["audio_codec"]},
                upstream=RelayUpstream(functools.partial(self._ask_keyframe, uid)),
                origin="relay", joined_at=float(d["joined_at"]),
                sender_clock=bool(d.get("sender_clock")))
            self._pubs[uid] = (int(d["epoch"]), handle)
        elif kind == UNPUBLISHED:
            d = json.loads(body)
            entry = self._pubs.get(d["uid"])
            if entry is not None and d.get("epoch") in (None, entry[0]):
                del self._pubs[d["uid"]]
                self._hub.detach(entry[1], "unpublished upstream")
        else:
            raise RelayError(f"unexpected message {kind!r} from the server")

    def _ask_keyframe(self, uid: str) -> None:
        writer = self._writer
        if writer is not None and not writer.transport.is_closing():
            writer.write(message(KEYFRAME, uid.encode()))
            self.stats.keyframe_requests += 1

    async def _heartbeat(self, writer: asyncio.StreamWriter) -> None:
        ping, transport = message(PING), writer.transport
        while not transport.is_closing():
            await asyncio.sleep(self._owner.heartbeat_s)
            if time.monotonic() - self._last_rx > self._owner.timeout_s:
                log.warning("relay of %s/%s from %s silent; reconnecting", *self.key,
                            self.address)
                transport.abort()
                return
            transport.write(ping)

    def _unpublish_all(self, reason: str) -> None:
        pubs = list(self._pubs.values())
        self._pubs.clear()
        self._slots.clear()
        for _, handle in pubs:
            self._hub.detach(handle, reason)

    def __repr__(self) -> str:
        state = "connected" if self.connected else "closed" if self._closed else "connecting"
        return f"<RelayLink {self.key[0]}/{self.key[1]} from {self.address} {state}>"

