"""An SRT listener for publishers sending MPEG-TS: libsrt through ctypes.

``srt://HOST:PORT?streamid=publish:{appid}/{roomid}/{uid}:{token}``. libsrt calls the listen
callback with the ``streamid`` during the handshake; the callback runs ``handler.authorize`` on
the event loop and refuses a bad name or token with an SRT reject reason (1400 bad request, 1401
unauthorized, 1503 when full), so a refused caller never gets a connection (FFmpeg exits with
"connection rejected") and a WARNING names app/room/uid.

One thread reads every accepted connection: it waits on one SRT epoll over all their sockets
(read without blocking), and once any is readable sleeps :data:`BATCH_S` so that more arrives,
then takes from each connection what waits (up to :data:`BATCH_BYTES`) in one go and hands the
payload, the MPEG-TS as sent, joined, to ``handler.data`` on the event loop
(``conn.fmt == "mpegts"``). The thread and the loop so wake some 25 times a second for all
publishers together, not once per 1316-byte message (nor once per publisher: a thread per
connection cost a quarter of the listener's CPU at 16 publishers). At most :data:`MAX_QUEUED`
hand-offs per connection are in flight: a connection whose loop side is behind is not read
(libsrt's buffers are bounded and it drops late packets), so memory stays bounded; a stalled or
vanished peer breaks the connection after ``SRTO_PEERIDLETIMEO``. Nothing is demuxed here: the
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

MAX_QUEUED = 64  # hand-offs of one connection waiting for the loop
BATCH_S = 0.04  # the reader's wait after a wake: messages of 40 ms joined into one hand-off
BATCH_BYTES = 256 * 1024  # taken from one connection per wake (~50 Mbps)
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
        self._rx: libsrt.Epoll | None = None  # the accepted sockets, read by one thread
        self._reading: dict[int, _Connection] = {}  # socket → connection, under _rx_lock
        self._rx_lock = threading.Lock()
        self._added = threading.Event()  # a connection was added (the reader may sleep on it)
        self._reader: threading.Thread | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._open)
        self._thread = threading.Thread(target=self._accept_loop, name="srt-accept", daemon=True)
        self._thread.start()
        self._reader = threading.Thread(target=self._read_loop, name="srt-read", daemon=True)
        self._reader.start()
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
            self._rx = libsrt.Epoll()
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
        if self._reader is not None:  # it ends each connection, then itself
            self._added.set()
            self._reader.join()
        if self._rx is not None:
            self._rx.close()
            self._rx = None

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
        assert self._rx is not None
        with self._rx_lock:
            try:
                self._rx.add(sock)
            except libsrt.SrtError as exc:
                logger.warning("srt connection from %s dropped: %s", peer, exc)
                libsrt.lib().srt_close(sock)
                return
            self.connections.add(conn)
            conn.post(self.handler.started)  # before the reader can hand on any data
            self._reading[sock] = conn
        logger.info("srt publisher %s/%s/%s from %s", sn.appid, sn.roomid, sn.uid, peer)
        self._added.set()

    def _read_loop(self) -> None:
        """Reads every connection (see the module docstring) until the server stops and the
        last connection ended."""
        assert self._rx is not None
        while True:
            with self._rx_lock:
                conns = list(self._reading.values())
            if not conns:
                if self._stop.is_set():
                    return
                self._added.wait(0.25)  # an empty SRT epoll does not wait
                self._added.clear()
                continue
            if not self._rx.wait(250, most=len(conns)) and all(c.reason is None for c in conns):
                continue
            time.sleep(BATCH_S)
            calls: list[Callable[[], None]] = []  # every connection's hand-off: one loop wake
            over = [conn for conn in conns if not conn.pump(calls)]
            if calls:
                assert self._loop is not None
                self._loop.call_soon_threadsafe(_run_all, calls)
            for conn in over:  # after their last data
                self._end(conn)

    def _end(self, conn: _Connection) -> None:
        """The connection's socket gave its last: closed, ``ended`` posted to the loop."""
        assert self._rx is not None and self._loop is not None
        with self._rx_lock:
            self._reading.pop(conn.sock, None)
            self._rx.remove(conn.sock)
        libsrt.lib().srt_close(conn.sock)
        conn.info._closer = None
        reason = conn.reason or conn.error or "closed"
        conn.post(self.handler.ended, reason)
        self._loop.call_soon_threadsafe(self.connections.discard, conn)
        logger.info("srt publisher %s/%s/%s left: %s", conn.info.appid, conn.info.roomid,
                    conn.info.uid, reason)


def _run_all(calls: list[Callable[[], None]]) -> None:
    for call in calls:
        call()


class _Connection:
    """One accepted SRT socket and its hand-off to the loop (read by the server's reader)."""

    def __init__(self, server: SrtServer, sock: int, info: IngestConnection) -> None:
        self.server, self.sock, self.info = server, sock, info
        self.reason: str | None = None  # why the handler closed it
        self.error: str | None = None  # what failed while reading
        self.done = False  # ended() was called, on the loop
        self.ended = False  # the socket has nothing more to give
        self._buf, self._so = ctypes.create_string_buffer(MESSAGE_BUFFER), libsrt.lib()
        libsrt.set_int(sock, libsrt.RCVSYN, 0)  # read without waiting; the epoll waits
        self.queued = threading.Semaphore(MAX_QUEUED)
        info._closer = self.close

    def close(self, reason: str) -> None:
        """Ends the connection from the handler: the reader sees it closed."""
        self.reason = self.reason or reason
        threading.Thread(target=libsrt.lib().srt_close, args=(self.sock,), daemon=True).start()

    def post(self, fn: Callable[..., None], *args: Any,
             into: list[Callable[[], None]] | None = None) -> None:
        """Runs ``fn(conn, *args)`` on the loop (``into``: appended there, for the caller to
        schedule with others); a failure there closes the connection."""
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
        if into is not None:
            into.append(call)
            return
        assert self.server._loop is not None
        self.server._loop.call_soon_threadsafe(call)

    def pump(self, into: list[Callable[[], None]]) -> bool:
        """Hands on what waits (up to :data:`BATCH_BYTES`, joined); False once the connection
        is over (closed by the handler, broken, or the peer left); the hand-off goes ``into``
        the reader's list. A connection with :data:`MAX_QUEUED` hand-offs in flight is not
        read this time."""
        if self.reason is not None or self.ended:
            return False
        if not self.queued.acquire(blocking=False):
            return True
        parts, size = [], 0
        try:
            while size < BATCH_BYTES:
                part = self._recv()
                if not part:
                    break
                parts.append(part)
                size += len(part)
        except Exception as exc:  # noqa: BLE001 - must end with ended(), whatever failed
            self.error, self.ended = f"stream error: {exc}", True
            logger.info("srt %s: %s", self.info.peer, self.error)
        if parts and self.reason is None:
            self.post(self.server.handler.data, b"".join(parts), into=into)
        else:
            self.queued.release()
        return self.reason is None and not self.ended

    def _recv(self) -> bytes:
        """One message if one is waiting (b"" if not; ``ended`` set when the socket broke)."""
        n = self._so.srt_recvmsg(self.sock, self._buf, MESSAGE_BUFFER)
        if n > 0:
            self.info.bytes_in += n
            return ctypes.string_at(self._buf, n)
        if not (n == libsrt.ERROR and self._so.srt_getlasterror(None) in (libsrt.E_ASYNCRCV,
                                                                           libsrt.E_TIMEOUT)):
            self.ended = True
        return b""
