"""An SRT listener for publishers sending MPEG-TS: libsrt through ctypes.

``srt://HOST:PORT?streamid=publish:{appid}/{roomid}/{uid}:{token}``. libsrt calls the listen
callback with the ``streamid`` during the handshake; the callback runs ``handler.authorize`` on
the event loop and refuses a bad name or token with an SRT reject reason (1400 bad request, 1401
unauthorized, 1503 when full), so a refused caller never gets a connection (FFmpeg exits with
"connection rejected") and a WARNING names app/room/uid.

Each accepted connection has one thread: it waits on an SRT epoll for the socket (read without
blocking), takes the messages that arrive within :data:`BATCH_S` of the first in one go
(libsrt's buffers are bounded, a stalled or vanished peer breaks the connection after
``SRTO_PEERIDLETIMEO``) and hands their payload, the MPEG-TS as sent, joined, to
``handler.data`` on the event loop (``conn.fmt == "mpegts"``),
at most :data:`MAX_QUEUED` messages per connection in flight: a slow loop makes the thread
wait, and libsrt then drops late packets, so memory stays bounded. Nothing is demuxed here: the
worker that owns the room does it (:mod:`cloudrec.ingest.demux`), so the listener loads no
media library.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from . import libsrt
from .base import IngestConnection, IngestHandler, IngestRefused, parse_srt_streamid

logger = logging.getLogger(__name__)
__all__ = ["SrtServer"]

MAX_QUEUED = 256
BATCH_S = 0.04  # messages joined into one hand-off, at most this long after the first
BATCH_BYTES = 64 * 1024
MESSAGE_BUFFER = 2048  # an SRT live message is at most 1456 bytes
AUTHORIZE_TIMEOUT = 5.0


class SrtServer:
    """Accepts SRT publishers on ``host:port`` (UDP; ``port=0``: a free one, read ``.port``)."""

    def __init__(self, handler: IngestHandler, host: str = "0.0.0.0", port: int = 8890, *,
                 max_connections: int = 256, latency_ms: int = 120,
                 peer_idle_timeout_ms: int = 5000) -> None:
        self.handler, self.host, self.port = handler, host, port
        self.max_connections = max_connections
        self.latency_ms, self.peer_idle_timeout_ms = latency_ms, peer_idle_timeout_ms
        self.connections: set[_Connection] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sock = libsrt.INVALID
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._callback = libsrt.ListenCallback(self._on_listen)  # referenced while listening

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._open)
        self._thread = threading.Thread(target=self._accept_loop, name="srt-accept", daemon=True)
        self._thread.start()
        logger.info("srt ingest listening on %s:%d", self.host, self.port)

    def _open(self) -> None:
        so = libsrt.lib()
        sock = libsrt.check(so.srt_create_socket(), "srt_create_socket")
        try:
            # options set on the listener are inherited by the sockets it accepts
            libsrt.set_int(sock, libsrt.LATENCY, self.latency_ms)
            libsrt.set_int(sock, libsrt.PEERIDLETIMEO, self.peer_idle_timeout_ms)
            addr = libsrt.sockaddr(self.host, self.port)
            libsrt.check(so.srt_bind(sock, addr, len(addr)), f"srt_bind {self.host}:{self.port}")
            libsrt.check(so.srt_listen_callback(sock, self._callback, None), "srt_listen_callback")
            libsrt.check(so.srt_listen(sock, 64), "srt_listen")
            self.port = libsrt.local_port(sock)
        except BaseException:
            so.srt_close(sock)
            raise
        self._sock = sock

    async def close(self) -> None:
        """Stops listening and drops every connection (each ends with ``"server closed"``)."""
        self._stop.set()
        conns = list(self.connections)
        for conn in conns:
            conn.reason = conn.reason or "server closed"
        await asyncio.to_thread(self._close_all, conns)
        while self.connections:  # their last callbacks are queued on this loop
            await asyncio.sleep(0.01)

    def _close_all(self, conns: list[_Connection]) -> None:
        if self._thread is not None:
            self._thread.join()
        if self._sock != libsrt.INVALID:
            libsrt.lib().srt_close(self._sock)
            self._sock = libsrt.INVALID
        for conn in conns:
            libsrt.lib().srt_close(conn.sock)
            conn.thread.join()

    def _on_listen(self, _opaque: Any, sock: int, _hsversion: int, peeraddr: int,
                   streamid: bytes | None) -> int:
        """libsrt's listen callback (a libsrt thread): 0 accepts, -1 refuses."""
        name = (streamid or b"").decode(errors="replace")
        host, port = libsrt.parse_sockaddr(ctypes.string_at(peeraddr, 28))
        peer = f"{host}:{port}"
        reject, who = libsrt.REJ_BAD_REQUEST, ("?", "?", "?")
        try:
            sn = parse_srt_streamid(name)
            who = (str(sn.appid), sn.roomid, sn.uid)
            if self._stop.is_set() or len(self.connections) >= self.max_connections:
                reject = libsrt.REJ_OVERLOAD
                raise IngestRefused("the server is full or closing")
            reject = libsrt.REJ_UNAUTHORIZED
            if not sn.token:
                raise IngestRefused("missing token")
            assert self._loop is not None
            asyncio.run_coroutine_threadsafe(
                self.handler.authorize(sn.appid, sn.roomid, sn.uid, sn.token),
                self._loop).result(AUTHORIZE_TIMEOUT)
            return 0
        except Exception as exc:  # noqa: BLE001 - any failure of authorize refuses
            why = str(exc) or type(exc).__name__
            logger.warning("srt publish refused: app=%s room=%s uid=%s from %s: %s", *who,
                           peer, why)
            libsrt.lib().srt_setrejectreason(sock, reject)
            return -1

    def _accept_loop(self) -> None:
        so, epoll = libsrt.lib(), libsrt.Epoll()
        try:
            epoll.add(self._sock)
            while not self._stop.is_set():
                if not epoll.wait(250):
                    continue
                addr, size = ctypes.create_string_buffer(128), ctypes.c_int(128)
                sock = so.srt_accept(self._sock, addr, ctypes.byref(size))
                if sock == libsrt.INVALID:
                    if not self._stop.is_set():
                        logger.warning("srt_accept: %s", libsrt.last_error()[1])
                        time.sleep(0.1)
                    continue
                host, port = libsrt.parse_sockaddr(addr.raw)
                self._accepted(sock, f"{host}:{port}")
        finally:
            epoll.close()

    def _accepted(self, sock: int, peer: str) -> None:
        try:  # authorized in the callback already: only the name is read again
            sn = parse_srt_streamid(libsrt.get_string(sock, libsrt.STREAMID))
        except (IngestRefused, libsrt.SrtError) as exc:
            logger.warning("srt connection from %s dropped: %s", peer, exc)
            libsrt.lib().srt_close(sock)
            return
        try:
            conn = _Connection(self, sock, IngestConnection("srt", sn.appid, sn.roomid, sn.uid,
                                                              peer, "mpegts"))
        except libsrt.SrtError as exc:
            logger.warning("srt connection from %s dropped: %s", peer, exc)
            libsrt.lib().srt_close(sock)
            return
        self.connections.add(conn)
        logger.info("srt publisher %s/%s/%s from %s", sn.appid, sn.roomid, sn.uid, peer)
        conn.post(self.handler.started)
        conn.thread.start()


class _Connection:
    """One accepted SRT socket, its receiving thread, and its hand-off to the loop."""

    def __init__(self, server: SrtServer, sock: int, info: IngestConnection) -> None:
        self.server, self.sock, self.info = server, sock, info
        self.reason: str | None = None
        self.done = False  # ended() was called, on the loop
        self.ended = False  # the socket has nothing more to give
        self._buf, self._so = ctypes.create_string_buffer(MESSAGE_BUFFER), libsrt.lib()
        libsrt.set_int(sock, libsrt.RCVSYN, 0)  # read without waiting; the epoll waits
        self._epoll = libsrt.Epoll()
        try:
            self._epoll.add(sock)
        except libsrt.SrtError:
            self._epoll.close()
            raise
        self.queued = threading.Semaphore(MAX_QUEUED)
        self.thread = threading.Thread(target=self._run, name=f"srt-{sock}", daemon=True)
        info._closer = self.close

    def close(self, reason: str) -> None:
        """Ends the connection from the handler: the receiving thread sees it closed."""
        self.reason = self.reason or reason
        threading.Thread(target=libsrt.lib().srt_close, args=(self.sock,), daemon=True).start()

    def post(self, fn: Callable[..., None], *args: Any) -> None:
        """Runs ``fn(conn, *args)`` on the loop; a failure there closes the connection."""
        def call() -> None:
            if fn == self.server.handler.data:
                self.queued.release()
            if self.done:
                return
            self.done = fn == self.server.handler.ended
            try:
                fn(self.info, *args)
            except Exception as exc:
                logger.exception("srt ingest handler failed")
                if fn != self.server.handler.ended:
                    self.close(f"handler error: {exc!r}")
        assert self.server._loop is not None
        self.server._loop.call_soon_threadsafe(call)

    def _run(self) -> None:
        reason = "closed"
        try:
            while (chunk := self.read()) and self.deliver(chunk) and not self.ended:
                pass
        except Exception as exc:  # noqa: BLE001 - must end with ended(), whatever failed
            reason = f"stream error: {exc}"
            logger.info("srt %s: %s", self.info.peer, reason)
        finally:
            libsrt.lib().srt_close(self.sock)
            self._epoll.close()
            self.info._closer = None
            reason = self.reason or reason
            self.post(self.server.handler.ended, reason)
            assert self.server._loop is not None
            self.server._loop.call_soon_threadsafe(self.server.connections.discard, self)
            logger.info("srt publisher %s/%s/%s left: %s", self.info.appid, self.info.roomid,
                        self.info.uid, reason)

    def read(self) -> bytes:
        """The next SRT messages, joined: once one is there, what arrives within
        :data:`BATCH_S` (up to :data:`BATCH_BYTES`), taken in one go after that wait, so that
        this thread and the loop wake some 25 times a second per publisher rather than once per
        1316-byte message; b"" once the connection ended."""
        first = self._take()
        if not first:
            return b""
        parts, size = [first], len(first)
        time.sleep(BATCH_S)
        while size < BATCH_BYTES and self.reason is None:
            part = self._recv()
            if not part:
                break
            parts.append(part)
            size += len(part)
        return b"".join(parts)

    def _take(self) -> bytes:
        """The first message of a batch, waited for; b"" once the connection ended."""
        while self.reason is None and not self.ended:
            data = self._recv()
            if data:
                return data
            if not self.ended:
                self._epoll.wait(250)
        self.ended = True
        return b""

    def _recv(self) -> bytes:
        """One message if one is waiting (b"" if not; ``ended`` set when the socket broke)."""
        n = self._so.srt_recvmsg(self.sock, self._buf, MESSAGE_BUFFER)
        if n > 0:
            self.info.bytes_in += n
            return ctypes.string_at(self._buf, n)
        if not (n == libsrt.ERROR and libsrt.last_error()[0] in (libsrt.E_ASYNCRCV,
                                                                 libsrt.E_TIMEOUT)):
            self.ended = True
        return b""

    def deliver(self, chunk: bytes) -> bool:
        """Hands ``chunk`` to the loop, waiting while :data:`MAX_QUEUED` are in flight."""
        while not self.queued.acquire(timeout=0.5):
            if self.reason is not None:
                return False
        if self.reason is not None:
            return False
        self.post(self.server.handler.data, chunk)
        return True
