"""The sending end: a TCP server beside a worker's :class:`RoomHub` that streams a room's
publications, still encoded, to the workers that record it.

One connection carries one room. After the handshake (:mod:`cloudrec.relay.wire`) the server
subscribes to its hub like a recorder would and writes presence and frames as they come. A room
is relayed from its owner, so publications that came in here over a relay are not sent on
(two workers that both believed the other owned a room would otherwise echo it forever), unless
``forward_relayed`` asks for a cascade (one link across nodes fanned out to a node's workers).
The server's subscriptions never call the hub's relay hooks (``relay=False``). The client may
ask for a keyframe of a uid; it goes upstream to the publisher (an RTCP PLI for a WebRTC one).

Backpressure never reaches the hub. The hub pushes into the subscription without waiting; the
pump writes to the socket without waiting either, and when more than ``max_buffer_bytes`` are
still unsent it drops frames instead: audio packets simply, video until the uid's next keyframe
(asked for at once), counted in :attr:`RelayServer.stats`. A uid's video also starts at a
keyframe (subscribing asks for one), so the far side never gets frames it cannot decode. The
bound is in bytes, not frames, so a slow peer costs a bounded delay too. If the event loop
itself falls behind, the subscription's own bound applies (its drops are added to the same
counters).

Each end sends a ping every ``heartbeat_s`` and drops a connection silent for ``timeout_s``,
so a vanished peer (a dead node sends no FIN) is noticed in seconds.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import time
from typing import Any

from cloudrec.relay.stats import RelayStats
from cloudrec.relay.wire import (
    AUTH,
    ERROR,
    HELLO,
    KEYFRAME,
    MAC_BYTES,
    MAX_HANDSHAKE,
    NONCE_BYTES,
    OK,
    PING,
    PUBLISHED,
    SLOT,
    STREAM,
    UNPUBLISHED,
    VERSION,
    RelayError,
    RelayRefused,
    client_mac,
    frame_message,
    json_message,
    message,
    read_message,
    secret_bytes,
    server_mac,
)
from cloudrec.rooms.hub import RoomHub
from cloudrec.rooms.subscription import PublisherEvent, PublisherInfo, RoomKey, Subscription

log = logging.getLogger(__name__)


def info_json(info: PublisherInfo) -> dict[str, Any]:
    return {"uid": info.uid, "kinds": sorted(info.kinds), "video_codec": info.video_codec,
            "audio_codec": info.audio_codec, "joined_at": info.joined_at, "epoch": info.epoch,
            "sender_clock": info.sender_clock}


class RelayServer:
    """Serves the rooms of ``hub`` to authenticated relay clients (:class:`RelayLinks`)."""

    def __init__(self, hub: RoomHub, secret: str | bytes, host: str = "127.0.0.1",
                 port: int = 0, *, max_buffer_bytes: int = 512 * 1024, heartbeat_s: float = 1.0,
                 timeout_s: float = 5.0, handshake_timeout_s: float = 5.0,
                 forward_relayed: bool = False) -> None:
        self.hub = hub
        self.forward_relayed = forward_relayed
        self.host, self.port = host, port
        self.max_buffer_bytes = max_buffer_bytes
        self.heartbeat_s, self.timeout_s = heartbeat_s, timeout_s
        self.handshake_timeout_s = handshake_timeout_s
        self.stats = RelayStats()
        self._secret = secret_bytes(secret)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[Any]] = set()

    @property
    def address(self) -> str:
        """``host:port`` for :meth:`RelayLinks.ensure` (the cluster directory's ``relay``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def open_connections(self) -> int:
        return len(self._writers)

    async def start(self) -> RelayServer:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("relay server on %s", self.address)
        return self

    async def close(self) -> None:
        """Stop listening and end every connection (clients see the link drop)."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> RelayServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- one connection -------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        peer = writer.get_extra_info("peername")
        try:
            try:
                key = await asyncio.wait_for(self._handshake(reader, writer),
                                             self.handshake_timeout_s)
            except RelayRefused as exc:
                self.stats.refused += 1
                log.warning("relay client %s refused: %s", peer, exc)
                writer.write(message(ERROR, str(exc).encode()))
                return
            except (RelayError, OSError, EOFError, TimeoutError) as exc:
                log.info("relay client %s: handshake failed (%r)", peer, exc)
                return
            self.stats.connections += 1
            log.info("relay client %s subscribed to %s/%s", peer, *key)
            await _Session(self, key, reader, writer).run()
        finally:
            self._writers.discard(writer)
            self._handlers.discard(task)
            writer.close()

    async def _handshake(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> RoomKey:
        nonce = secrets.token_bytes(NONCE_BYTES)
        writer.write(message(HELLO, bytes([VERSION]) + nonce))
        kind, body = await read_message(reader, MAX_HANDSHAKE)
        if kind != AUTH or len(body) < NONCE_BYTES + MAC_BYTES:
            raise RelayRefused("expected an AUTH message")
        client_nonce = body[:NONCE_BYTES]
        mac = body[NONCE_BYTES:NONCE_BYTES + MAC_BYTES]
        request = body[NONCE_BYTES + MAC_BYTES:]
        if not hmac.compare_digest(mac, client_mac(self._secret, nonce, client_nonce, request)):
            raise RelayRefused("authentication failed")
        try:
            fields = json.loads(request)
            key = (int(fields["appid"]), str(fields["roomid"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise RelayRefused(f"bad request ({exc})") from exc
        writer.write(message(OK, server_mac(self._secret, nonce, client_nonce)))
        return key


class _Session:
    """One authenticated connection: the pump (hub → socket), the reader (keyframe requests,
    pings) and the heartbeat."""

    def __init__(self, server: RelayServer, key: RoomKey, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.key = key
        self.reader, self.writer = reader, writer
        self.last_rx = time.monotonic()

    async def run(self) -> None:
        sub = self.server.hub.subscribe(*self.key, relay=False)
        tasks = [asyncio.create_task(self._pump(sub)), asyncio.create_task(self._heartbeat())]
        try:
            await self._read(sub)
        except (RelayError, OSError, EOFError) as exc:
            log.info("relay client of %s/%s gone (%r)", *self.key, exc)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            sub.close()
            self.server.stats.dropped_video += sub.dropped_video
            self.server.stats.dropped_audio += sub.dropped_audio

    async def _read(self, sub: Subscription) -> None:
        stats = self.server.stats
        while True:
            kind, body = await read_message(self.reader, MAX_HANDSHAKE)
            self.last_rx = time.monotonic()
            if kind == KEYFRAME:
                stats.keyframe_requests += 1
                sub.request_keyframe(body.decode())
            elif kind != PING:
                raise RelayError(f"unexpected message {kind!r} from the client")

    async def _heartbeat(self) -> None:
        transport = self.writer.transport
        ping = message(PING)
        while not transport.is_closing():
            await asyncio.sleep(self.server.heartbeat_s)
            if time.monotonic() - self.last_rx > self.server.timeout_s:
                log.info("relay client of %s/%s silent; dropping it", *self.key)
                transport.abort()
                return
            transport.write(ping)

    async def _pump(self, sub: Subscription) -> None:
        """Hub → socket, never waiting on the socket (see the module's note on backpressure)."""
        transport = self.writer.transport
        write, unsent = transport.write, transport.get_write_buffer_size
        stats, limit, monotonic = self.server.stats, self.server.max_buffer_bytes, time.monotonic
        slots: dict[tuple[str, str], tuple[int, str, int, int]] = {}  # (uid, kind) → slot
        next_slot = 0
        # uids whose video waits for a keyframe: True after a drop for a slow peer (counted),
        # False from a publication's start (the peer could not decode those frames anyway)
        resync: dict[str, bool] = {}
        relayed: set[str] = set()  # uids published here by a relay: not sent on
        forward = self.server.forward_relayed
        try:
            while True:
                item = await sub.get()
                if transport.is_closing():
                    return
                if type(item) is PublisherEvent:
                    self._event(item, write, relayed, resync, slots, forward)
                    continue
                uid, frame = item
                if relayed and uid in relayed:
                    continue
                video = frame.kind == "video"
                if video and resync and uid in resync and not frame.keyframe:
                    if resync[uid]:
                        stats.dropped_video += 1
                    continue
                if unsent() > limit:
                    if not video:
                        stats.dropped_audio += 1
                        continue
                    stats.dropped_video += 1
                    if not resync.get(uid):
                        resync[uid] = True
                        sub.request_keyframe(uid)
                    continue
                if video and resync:
                    resync.pop(uid, None)
                slot = slots.get((uid, frame.kind))
                if (slot is None or slot[3] != frame.epoch or slot[1] != frame.codec
                        or slot[2] != frame.clock_rate):
                    slot = (next_slot, frame.codec, frame.clock_rate, frame.epoch)
                    next_slot = (next_slot + 1) & 0xFFFF
                    slots[(uid, frame.kind)] = slot
                    declare = json.dumps({"uid": uid, "kind": frame.kind, "codec": frame.codec,
                                          "clock_rate": frame.clock_rate, "epoch": frame.epoch},
                                         separators=(",", ":")).encode()
                    write(message(STREAM, SLOT.pack(slot[0]) + declare))
                data = frame_message(slot[0], video, frame.keyframe, frame.timestamp,
                                     int((monotonic() - frame.arrival) * 1e6), frame.data,
                                     frame.wallclock)
                write(data)
                stats.frames += 1
                stats.bytes += len(data)
        except Exception as exc:  # SubscriptionClosed (the hub closed) or a bug: end the link
            log.info("relay pump of %s/%s ends (%r)", *self.key, exc)
            transport.close()

    @staticmethod
    def _event(event: PublisherEvent, write: Any, relayed: set[str], resync: dict[str, bool],
               slots: dict[tuple[str, str], Any], forward: bool) -> None:
        info, uid = event.info, event.uid
        if info is not None and info.relayed and not forward:
            relayed.add(uid)
            return
        relayed.discard(uid)
        resync.pop(uid, None)
        if event.kind == "published" and info is not None:
            resync[uid] = False  # joining mid-GOP: start at the keyframe subscribing asked for
            write(json_message(PUBLISHED, info_json(info)))
        elif event.kind == "unpublished":
            slots.pop((uid, "video"), None)
            slots.pop((uid, "audio"), None)
            write(json_message(UNPUBLISHED, {"uid": uid,
                                             "epoch": info.epoch if info else None}))
