"""The front's side of push ingest: the RTMP and SRT listeners, and the links from each publisher
to the worker that owns its room.

:class:`PushGateway` is the listeners' :class:`~cloudrec.ingest.base.IngestHandler`:

- ``authorize``: the publish token (the JWT a WHIP publisher uses, checked with the app's
  secret), then the room's placement, exactly as for WHIP (its live owner, or the worker with
  the most spare capacity); a full cluster refuses the publisher at once (WARNING);
- ``started``: a link to the owner (:meth:`~cloudrec.workers.client.WorkerClient.
  ingest_stream`: a direct call in process, a streaming POST to another process or node);
- ``data``: the bytes go down the link; at most :data:`MAX_BUFFERED` bytes wait for it, beyond
  that the publisher is dropped (a worker that does not keep up never grows the front);
- ``ended``: the link's stream ends, and with it the publication.

A link that ends first (the worker ended the publication: replaced, unsupported codec, garbage;
or the worker went away) drops the publisher with the reason; its reconnect is placed anew.

This module loads no media library: the front only moves bytes.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from ..errors import AuthError, CapacityError
from ..tokens import verify_token
from .base import IngestConnection

logger = logging.getLogger(__name__)
__all__ = ["PushGateway"]

MAX_BUFFERED = 8 << 20  # bytes of one publisher waiting for its link


class _Front(Protocol):
    """What the gateway uses of :class:`cloudrec.api.front.Front`."""

    async def _place(self, appid: int, roomid: str, prefer: str | None = None) -> Any: ...

    def client_for(self, info: Any) -> Any: ...


class _Link:
    """One publisher's bytes on their way to the worker (a bounded queue)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.buffered = 0
        self.ended = False
        self.task: asyncio.Task[None] | None = None

    def put(self, chunk: bytes) -> bool:
        if self.ended:
            return True
        self.buffered += len(chunk)
        self.queue.put_nowait(chunk)
        return self.buffered <= MAX_BUFFERED

    def end(self) -> None:
        if not self.ended:
            self.ended = True
            self.queue.put_nowait(None)

    async def chunks(self) -> AsyncIterator[bytes]:
        """What the publisher sent, joined while the link is behind; ends with the publisher."""
        queue = self.queue
        while True:
            chunk = await queue.get()
            if chunk is None:
                return
            parts = [chunk]
            while not queue.empty():
                more = queue.get_nowait()
                if more is None:
                    self.buffered = 0
                    yield b"".join(parts)
                    return
                parts.append(more)
            data = parts[0] if len(parts) == 1 else b"".join(parts)
            self.buffered -= len(data)
            yield data


class PushGateway:
    """The handler of a front's RTMP and SRT listeners (see the module docstring)."""

    def __init__(self, front: _Front, secret_for: Callable[[int], str | None]) -> None:
        self.front = front
        self.secret_for = secret_for
        self.links: dict[IngestConnection, _Link] = {}
        self.servers: list[Any] = []

    async def start(self, host: str, rtmp_port: int, srt_port: int, tls_cert: str = "",
                    tls_key: str = "") -> None:
        """Starts the listeners that are on (port 0: off). One that cannot start (its port is
        taken, libsrt missing) is logged as an ERROR and the node serves on without it."""
        if rtmp_port:
            from .rtmp import RtmpServer

            context = None
            if tls_cert:
                context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                context.load_cert_chain(tls_cert, tls_key)
            await self._start(RtmpServer(self, host, rtmp_port, ssl_context=context),
                              "rtmps" if context else "rtmp", "rtmp_port")
        if srt_port:
            try:
                from .srt import SrtServer
            except OSError as exc:  # pragma: no cover - libsrt comes with Debian's ffmpeg
                logger.error("srt ingest off: %s (install libsrt1.5-gnutls, or set srt_port "
                             "= 0)", exc)
                return
            await self._start(SrtServer(self, host, srt_port), "srt", "srt_port")

    async def _start(self, server: Any, what: str, setting: str) -> None:
        try:
            await server.start()
        except OSError as exc:
            logger.error("%s ingest off: cannot listen on %s:%d: %s (set %s to a free port, "
                         "or 0 to turn it off)", what, server.host, server.port, exc, setting)
            return
        self.servers.append(server)

    async def close(self) -> None:
        """Stops listening and drops every publisher."""
        for server in self.servers:
            await server.close()
        self.servers.clear()
        tasks = [link.task for link in self.links.values() if link.task is not None]
        for link in self.links.values():
            link.end()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)

    # -- IngestHandler --------------------------------------------------------------------------

    async def authorize(self, appid: int, roomid: str, uid: str, token: str) -> None:
        secret = self.secret_for(appid)
        if secret is None:
            raise AuthError(f"unknown app {appid}", code=1002)
        verify_token(token, appid, roomid, uid, secret)
        try:
            await self.front._place(appid, roomid)
        except CapacityError as exc:
            logger.warning("push publisher %s/%s/%s refused: %s", appid, roomid, uid,
                           exc.message)
            raise

    def started(self, conn: IngestConnection) -> None:
        link = self.links[conn] = _Link()
        link.task = asyncio.get_running_loop().create_task(self._run(conn, link))

    def data(self, conn: IngestConnection, chunk: bytes) -> None:
        link = self.links.get(conn)
        if link is not None and not link.put(chunk):
            link.end()
            conn.close("the worker does not keep up with this publisher")

    def ended(self, conn: IngestConnection, reason: str) -> None:
        link = self.links.pop(conn, None)
        if link is not None:
            link.end()

    async def _run(self, conn: IngestConnection, link: _Link) -> None:
        who = f"{conn.transport} {conn.appid}/{conn.roomid}/{conn.uid}"
        try:
            owner = await self.front._place(conn.appid, conn.roomid)
            client = self.front.client_for(owner)
            reason = await client.ingest_stream(conn.appid, conn.roomid, conn.uid,
                                                conn.transport, conn.fmt, link.chunks())
        except CapacityError as exc:
            reason = f"refused: {exc.message}"
            logger.warning("%s refused: %s", who, exc.message)
        except Exception as exc:  # noqa: BLE001 - the worker went away, or failed
            reason = f"the link to the worker failed: {exc}"
            logger.warning("%s: %s", who, reason)
        if not link.ended:  # the worker ended it first: drop the publisher, telling why
            link.end()
            conn.close(reason)
