"""An RTMP(S) server for publishers: many at once on one asyncio loop.

``rtmp://HOST:PORT/live/{appid}/{roomid}/{uid}?token=T`` (OBS: server ``rtmp://HOST:PORT/live``,
stream key ``{appid}/{roomid}/{uid}?token=T``). The ``publish`` command is answered only after
``handler.authorize`` accepted the token; a refusal answers an ``error`` status (FFmpeg and OBS
stop at once), logs a WARNING naming app/room/uid, and closes the connection. Playback is not
served.

The protocol is written here (:mod:`.chunks`, :mod:`.amf0`) rather than taken from PyPI: the one
maintained-looking package, ``pyrtmp`` 0.3.1, configures the root logger at DEBUG on import,
parses every header bit by bit through ``bitstring`` (CPU per byte at every stream's bitrate),
asserts on malformed input, and has no bound on message sizes or chunk streams; the older
``rtmpy``/``rtmplite`` are Twisted- or Python 2-era. What a publishing server needs is small:
handshake, chunk stream, a dozen AMF0 commands.

Limits: the handshake must finish in ``handshake_timeout`` s, a connection must publish within
``publish_timeout`` s, and one silent for ``idle_timeout`` s is dropped; ``max_connections``
caps concurrent connections; the chunk reader bounds memory per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from typing import Any

from . import amf0
from .base import (
    FLV_HEADER,
    IngestConnection,
    IngestHandler,
    IngestRefused,
    flv_tag_parts,
    parse_rtmp_name,
)
from .chunks import (
    ABORT,
    ACK,
    AGGREGATE,
    AUDIO,
    COMMAND_AMF0,
    COMMAND_AMF3,
    DATA_AMF0,
    DATA_AMF3,
    SET_CHUNK_SIZE,
    SET_PEER_BANDWIDTH,
    USER_CONTROL,
    VIDEO,
    WINDOW_ACK_SIZE,
    ChunkReader,
    ChunkWriter,
    Message,
    RtmpProtocolError,
    server_handshake,
)

logger = logging.getLogger(__name__)
__all__ = ["RtmpServer"]

WINDOW = 2_500_000
OUT_CHUNK_SIZE = 4096
MAX_METADATA_KEYS = 64


class RtmpServer:
    """Accepts RTMP publishers on ``host:port`` (``port=0``: a free one, read ``.port``)."""

    def __init__(self, handler: IngestHandler, host: str = "0.0.0.0", port: int = 1935,
                 ssl_context: ssl.SSLContext | None = None, *, max_connections: int = 256,
                 handshake_timeout: float = 10.0, publish_timeout: float = 20.0,
                 idle_timeout: float = 20.0) -> None:
        self.handler, self.host, self.port = handler, host, port
        self.ssl_context = ssl_context
        self.max_connections = max_connections
        self.handshake_timeout = handshake_timeout
        self.publish_timeout = publish_timeout
        self.idle_timeout = idle_timeout
        self.sessions: set[_Session] = set()
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.port,
                                                  ssl=self.ssl_context, limit=1 << 16)
        self.port = self._server.sockets[0].getsockname()[1]
        self._sweeper = asyncio.create_task(self._sweep())
        logger.info("rtmp%s ingest listening on %s:%d", "s" if self.ssl_context else "",
                    self.host, self.port)

    async def close(self) -> None:
        """Stops listening and drops every connection (each ends with ``"server closed"``)."""
        if self._server is not None:
            self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for session in list(self.sessions):
            session.drop("server closed")
        while self.sessions:
            await asyncio.sleep(0.01)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self.sessions) >= self.max_connections:
            writer.close()
            return
        session = _Session(self, reader, writer)
        self.sessions.add(session)
        try:
            await session.run()
        finally:
            self.sessions.discard(session)

    async def _sweep(self) -> None:
        """Drops connections that stalled: no handshake, no publish, or silence."""
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for s in list(self.sessions):
                if not s.handshaken and now - s.opened > self.handshake_timeout:
                    s.drop("handshake timed out")
                elif s.conn is None and now - s.opened > self.publish_timeout:  # or unpublished
                    s.drop("no publish")
                elif now - s.last_rx > self.idle_timeout:
                    s.drop("timed out")


class _Session:
    """One RTMP connection: commands until ``publish``, then media."""

    def __init__(self, server: RtmpServer, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.server, self.handler = server, server.handler
        self.reader, self.writer = reader, writer
        self.chunks, self.out = ChunkReader(reader), ChunkWriter(writer)
        peer = writer.get_extra_info("peername") or ("?", 0)
        self.peer = f"{peer[0]}:{peer[1]}"
        self.opened = self.last_rx = time.monotonic()
        self.handshaken = False
        self.app = ""
        self.conn: IngestConnection | None = None
        self.stream_id = 0
        self.metadata: dict[str, Any] = {}
        self.peer_window = WINDOW
        self.acked = 0
        self.next_stream_id = 1
        self.reason: str | None = None
        self.published = False
        self.told = False  # an error status was sent: close gracefully so that it arrives
        self.batch: list[bytes] = []  # FLV tags not yet handed on, in pieces

    def drop(self, reason: str) -> None:
        """Ends the connection from outside the read loop. While publishing, the publisher is
        told why first (an ``onStatus`` error: OBS shows it, FFmpeg logs it)."""
        if self.reason is None:
            self.reason = reason
        if self.conn is not None and not self.writer.is_closing():
            with contextlib.suppress(Exception):
                self._status(self.stream_id, "error", "NetStream.Publish.Failed", reason)
                self.told = True
                self.writer.close()  # the status goes out first
                return
        self.writer.transport.abort()

    async def run(self) -> None:
        try:
            await server_handshake(self.reader, self.writer)
            self.handshaken = True
            chunks = self.chunks
            while self.reason is None:
                message = chunks.buffered_message()
                if message is None:
                    self._flush_media()
                    await chunks.fill()
                    self.last_rx = time.monotonic()
                    continue
                if message.type in (VIDEO, AUDIO):
                    self._media(message.type, message.payload, message.timestamp)
                else:
                    self._flush_media()
                    await self._on_message(message)
                if chunks.bytes_read - self.acked >= self.peer_window:
                    self.acked = chunks.bytes_read
                    self.out.control(ACK, (self.acked & 0xFFFFFFFF).to_bytes(4, "big"))
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, OSError):
            self.reason = self.reason or "closed"
        except (RtmpProtocolError, amf0.Amf0Error, ValueError) as exc:
            self.reason = self.reason or f"protocol error: {exc}"
            logger.info("rtmp %s: %s", self.peer, self.reason)
        except Exception as exc:  # a handler or parser bug must not take the server down
            self.reason = self.reason or f"internal error: {exc!r}"
            logger.exception("rtmp %s: connection failed", self.peer)
        finally:
            await self._finish()

    async def _finish(self) -> None:
        self._end(self.reason or "closed")
        if (self.reason or "").startswith("refused") or self.told:
            self.writer.close()  # the error status goes out before the socket closes
        else:
            self.writer.transport.abort()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 5.0)
        self.writer.transport.abort()

    def _end(self, reason: str) -> None:
        """Ends the publication (``ended`` once); the connection may linger until closed."""
        self._flush_media()
        conn, self.conn = self.conn, None
        if conn is None:
            return
        conn._closer = None
        try:
            self.handler.ended(conn, reason)
        except Exception:
            logger.exception("rtmp ingest handler failed in ended()")
        logger.info("rtmp publisher %s/%s/%s left: %s", conn.appid, conn.roomid, conn.uid, reason)

    async def _on_message(self, m: Message) -> None:
        t = m.type
        if t in (VIDEO, AUDIO):
            self._media(t, m.payload, m.timestamp)
        elif t == AGGREGATE:
            self._aggregate(m)
        elif t in (COMMAND_AMF0, COMMAND_AMF3):
            payload = m.payload[1:] if t == COMMAND_AMF3 and m.payload[:1] == b"\x00" else m.payload
            await self._command(m.stream_id, amf0.decode_all(payload))
        elif t in (DATA_AMF0, DATA_AMF3):
            payload = m.payload[1:] if t == DATA_AMF3 and m.payload[:1] == b"\x00" else m.payload
            self._data(amf0.decode_all(payload))
        elif t == SET_CHUNK_SIZE:
            size = int.from_bytes(m.payload[:4], "big") & 0x7FFFFFFF
            if size < 1:
                raise RtmpProtocolError("chunk size 0")
            self.chunks.chunk_size = size  # reads stay bounded by the message limits
        elif t == ABORT:
            self.chunks.abort(int.from_bytes(m.payload[:4], "big"))
        elif t == WINDOW_ACK_SIZE:
            self.peer_window = max(int.from_bytes(m.payload[:4], "big"), 4096)
        elif t == USER_CONTROL and m.payload[:2] == b"\x00\x06":  # ping request: pong
            self.out.control(USER_CONTROL, b"\x00\x07" + m.payload[2:6])

    # commands

    def _send_command(self, stream_id: int, *values: Any) -> None:
        self.out.write(3 if stream_id == 0 else 5, COMMAND_AMF0, amf0.encode(*values), stream_id)

    def _status(self, stream_id: int, level: str, code: str, description: str) -> None:
        self._send_command(stream_id, "onStatus", 0, None,
                           {"level": level, "code": code, "description": description})

    async def _command(self, stream_id: int, values: list[Any]) -> None:
        if not values or not isinstance(values[0], str):
            raise RtmpProtocolError("a command without a name")
        name = values[0]
        txid = values[1] if len(values) > 1 and isinstance(values[1], float) else 0
        args = values[2:]
        if name == "connect":
            obj = args[0] if args and isinstance(args[0], dict) else {}
            self.app = str(obj.get("app") or "")
            self.out.control(WINDOW_ACK_SIZE, WINDOW.to_bytes(4, "big"))
            self.out.control(SET_PEER_BANDWIDTH, WINDOW.to_bytes(4, "big") + b"\x02")
            self.out.set_chunk_size(OUT_CHUNK_SIZE)
            self._send_command(0, "_result", txid, {"fmsVer": "FMS/3,0,1,123",
                                                    "capabilities": 31},
                               {"level": "status", "code": "NetConnection.Connect.Success",
                                "description": "Connection succeeded.", "objectEncoding": 0})
        elif name == "createStream":
            self._send_command(0, "_result", txid, None, self.next_stream_id)
            self.next_stream_id += 1
        elif name in ("releaseStream", "FCPublish", "_checkbw", "getStreamLength"):
            if txid:
                self._send_command(0, "_result", txid, None)
        elif name == "publish":
            await self._publish(stream_id, str(args[1]) if len(args) > 1 else "")
        elif name in ("FCUnpublish", "deleteStream", "closeStream"):
            self._end("unpublished")  # the peer closes the connection next
        elif name == "play":
            self._status(stream_id, "error", "NetStream.Play.Failed", "playback is not served")
            self.reason = "play refused"
        await self.writer.drain()

    async def _publish(self, stream_id: int, name: str) -> None:
        if self.conn is not None or self.published:
            raise RtmpProtocolError("a second publish on one connection")
        self.published = True
        try:
            sn = parse_rtmp_name(self.app, name)
        except IngestRefused as exc:
            return await self._refuse(stream_id, "?", "?", "?", str(exc))
        if not sn.token:
            return await self._refuse(stream_id, sn.appid, sn.roomid, sn.uid, "missing token")
        try:
            await self.server.handler.authorize(sn.appid, sn.roomid, sn.uid, sn.token)
        except Exception as exc:  # noqa: BLE001 - any failure of authorize refuses
            return await self._refuse(stream_id, sn.appid, sn.roomid, sn.uid,
                                      str(exc) or type(exc).__name__)
        if self.reason is not None:  # dropped while authorizing
            return
        conn = IngestConnection("rtmp", sn.appid, sn.roomid, sn.uid, self.peer, "flv")
        conn.metadata = self.metadata
        conn._closer = self.drop
        self.stream_id = stream_id
        self.out.control(USER_CONTROL, b"\x00\x00" + stream_id.to_bytes(4, "big"))
        self._status(stream_id, "status", "NetStream.Publish.Start", f"{name} is now published")
        self.conn = conn
        logger.info("rtmp publisher %s/%s/%s from %s", conn.appid, conn.roomid, conn.uid,
                    self.peer)
        self._call(self.handler.started, conn)
        if self.conn is conn:
            self._call(self.handler.data, conn, FLV_HEADER)

    async def _refuse(self, stream_id: int, appid: object, roomid: str, uid: str,
                      why: str) -> None:
        logger.warning("rtmp publish refused: app=%s room=%s uid=%s from %s: %s", appid, roomid,
                       uid, self.peer, why)
        self._status(stream_id, "error", "NetStream.Publish.BadName", f"refused: {why}")
        await self.writer.drain()
        self.reason = f"refused: {why}"

    def _call(self, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:
            logger.exception("rtmp ingest handler failed")
            self.reason = self.reason or f"handler error: {exc!r}"

    # media

    def _media(self, type_: int, body: bytes, timestamp: int) -> None:
        """One audio or video message, handed on as an FLV tag (never parsed here)."""
        conn = self.conn
        if conn is None or not body:
            return  # media before publish is ignored, as servers do
        conn.bytes_in += len(body)
        self.batch += flv_tag_parts(type_, timestamp, body)

    def _flush_media(self) -> None:
        """Hands the tags gathered so far on in one piece."""
        if self.batch:
            data = b"".join(self.batch)
            self.batch.clear()
            if self.conn is not None:
                self._call(self.handler.data, self.conn, data)

    def _aggregate(self, m: Message) -> None:
        """An aggregate message: FLV tags back to back, their times relative to the first."""
        data, pos, base = m.payload, 0, None
        while pos + 11 <= len(data) and self.reason is None:
            size = int.from_bytes(data[pos + 1:pos + 4], "big")
            ts = int.from_bytes(data[pos + 4:pos + 7], "big") | (data[pos + 7] << 24)
            base = ts if base is None else base
            if data[pos] in (AUDIO, VIDEO):
                self._media(data[pos], data[pos + 11:pos + 11 + size], m.timestamp + ts - base)
            pos += 11 + size + 4

    def _data(self, values: list[Any]) -> None:
        if values and values[0] == "@setDataFrame":
            values = values[1:]
        if len(values) >= 2 and values[0] == "onMetaData" and isinstance(values[1], dict):
            self.metadata.clear()
            for key, value in list(values[1].items())[:MAX_METADATA_KEYS]:
                if isinstance(value, str | float | bool) or value is None:
                    self.metadata[key] = value
