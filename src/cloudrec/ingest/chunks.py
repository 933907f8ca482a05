"""The RTMP wire: the handshake, and messages split into (and joined from) chunks.

Only what a server that receives publishers needs: the plain handshake (version 3, S2 echoing
C1; FFmpeg, OBS and librtmp-based encoders accept it, only RTMPE needs the digest variant), and a
chunk reader whose memory is bounded whatever the peer sends: a message may declare at most
:data:`MAX_MESSAGE` bytes, at most :data:`MAX_CHUNK_STREAMS` chunk streams may be open, and at
most :data:`MAX_PENDING` bytes of unfinished messages may be held; beyond that the reader raises
:class:`RtmpProtocolError` and the connection is closed. Buffers grow with bytes actually
received, never with what a header declares.
"""

from __future__ import annotations

import asyncio
import os
import struct
import time
from dataclasses import dataclass

MAX_MESSAGE = 8 << 20
MAX_PENDING = 16 << 20
MAX_CHUNK_STREAMS = 64
HANDSHAKE_SIZE = 1536
READ_SIZE = 1 << 16  # bytes asked of the socket at a time
_PARTIAL = object()  # a chunk that does not finish its message
# message type ids
SET_CHUNK_SIZE, ABORT, ACK, USER_CONTROL, WINDOW_ACK_SIZE, SET_PEER_BANDWIDTH = 1, 2, 3, 4, 5, 6
AUDIO, VIDEO, DATA_AMF3, COMMAND_AMF3, DATA_AMF0, COMMAND_AMF0, AGGREGATE = 8, 9, 15, 17, 18, 20, 22


class RtmpProtocolError(Exception):
    """The peer broke the RTMP protocol (or the reader's limits)."""


@dataclass(slots=True)
class Message:
    type: int
    stream_id: int
    timestamp: int  # milliseconds
    payload: bytes


@dataclass(slots=True)
class _ChunkStream:
    """The last header seen on one chunk stream id, and its unfinished message."""

    timestamp: int = 0
    ts_field: int = 0  # the last timestamp (fmt 0) or delta (fmt 1, 2) field as sent
    extended: bool = False
    length: int = 0
    type: int = 0
    stream_id: int = 0
    partial: bytearray | None = None


async def server_handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads C0+C1, answers S0+S1+S2, reads C2."""
    c0c1 = await reader.readexactly(1 + HANDSHAKE_SIZE)
    if c0c1[0] != 3:
        raise RtmpProtocolError(f"RTMP version {c0c1[0]} (only 3, plain RTMP, is served)")
    s1 = struct.pack(">II", int(time.monotonic() * 1000) & 0xFFFFFFFF, 0) + os.urandom(1528)
    writer.write(b"\x03" + s1 + c0c1[1:])
    await writer.drain()
    await reader.readexactly(HANDSHAKE_SIZE)


class ChunkReader:
    """Joins the chunks from ``reader`` into messages; ``bytes_read`` counts every byte.

    Bytes are read as they come, in reads of up to :data:`READ_SIZE`, and parsed from a buffer:
    :meth:`buffered_message` returns the next message the buffer completes without waiting (the
    caller may take a whole burst at once), :meth:`read_message` waits for one. The buffer holds
    at most one unfinished chunk plus one read: a chunk's header is checked against the limits
    before its body is waited for.
    """

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self.chunk_size = 128
        self.bytes_read = 0
        self._streams: dict[int, _ChunkStream] = {}
        self._pending = 0
        self._buf = bytearray()
        self._pos = 0

    async def fill(self) -> None:
        """Waits for more bytes; ``IncompleteReadError`` once the peer closed."""
        if self._pos:
            del self._buf[:self._pos]
            self._pos = 0
        data = await self._reader.read(READ_SIZE)
        if not data:
            raise asyncio.IncompleteReadError(bytes(self._buf), None)
        self.bytes_read += len(data)
        self._buf += data

    def abort(self, csid: int) -> None:
        """Drops the unfinished message of chunk stream ``csid`` (an Abort message)."""
        cs = self._streams.get(csid)
        if cs is not None and cs.partial is not None:
            self._pending -= cs.length
            cs.partial = None

    async def read_message(self) -> Message:
        """The next complete message."""
        while True:
            message = self.buffered_message()
            if message is not None:
                return message
            await self.fill()

    def buffered_message(self) -> Message | None:
        """The next message the bytes already received complete, or None."""
        while True:
            chunk = self._chunk()
            if chunk is None:
                return None
            if chunk is not _PARTIAL:
                return chunk  # type: ignore[return-value]

    def _chunk(self) -> Message | object | None:
        """Parses one chunk from the buffer: its message when it completes one, _PARTIAL when
        it does not, None when the buffer does not hold the whole chunk (nothing consumed)."""
        buf, p = self._buf, self._pos
        end = len(buf)
        if p >= end:
            return None
        first = buf[p]
        fmt, csid = first >> 6, first & 0x3F
        p += 1
        if csid == 0:
            if p + 1 > end:
                return None
            csid, p = 64 + buf[p], p + 1
        elif csid == 1:
            if p + 2 > end:
                return None
            csid, p = 64 + buf[p] + (buf[p + 1] << 8), p + 2
        cs = self._streams.get(csid)
        if cs is None:
            if fmt != 0 and csid != 2:
                raise RtmpProtocolError(f"chunk stream {csid} starts without a full header")
            if len(self._streams) >= MAX_CHUNK_STREAMS:
                raise RtmpProtocolError("too many chunk streams")
            cs = self._streams[csid] = _ChunkStream()
        new_message = cs.partial is None or fmt < 3
        length, type_, stream_id, extended = cs.length, cs.type, cs.stream_id, cs.extended
        if fmt < 3:
            hsize = (11, 7, 3)[fmt]
            if p + hsize > end:
                return None
            field = int.from_bytes(buf[p:p + 3], "big")
            if fmt < 2:
                length, type_ = int.from_bytes(buf[p + 3:p + 6], "big"), buf[p + 6]
            if fmt == 0:
                stream_id = int.from_bytes(buf[p + 7:p + 11], "little")
            p += hsize
            extended = field == 0xFFFFFF
            if extended:
                if p + 4 > end:
                    return None
                field, p = int.from_bytes(buf[p:p + 4], "big"), p + 4
        elif extended:
            if p + 4 > end:
                return None
            field, p = int.from_bytes(buf[p:p + 4], "big"), p + 4
        else:
            field = cs.ts_field
        have = 0 if new_message else len(cs.partial)  # type: ignore[arg-type]
        if new_message:
            if length > MAX_MESSAGE:
                raise RtmpProtocolError(f"message of {length} bytes (at most {MAX_MESSAGE})")
            held = self._pending - (cs.length if cs.partial is not None else 0)
            if held + length > MAX_PENDING:
                raise RtmpProtocolError("too many unfinished messages")
        size = min(self.chunk_size, length - have)
        if p + size > end:
            return None
        # the whole chunk is here: take it
        self._pos = p + size
        if fmt < 3:
            if cs.partial is not None:  # a new header in the middle of a message: drop it
                self.abort(csid)
            cs.length, cs.type, cs.stream_id, cs.extended = length, type_, stream_id, extended
            cs.timestamp = field if fmt == 0 else (cs.timestamp + field) & 0xFFFFFFFF
            cs.ts_field = field
        elif new_message:
            if extended:
                cs.ts_field = field
            cs.timestamp = (cs.timestamp + cs.ts_field) & 0xFFFFFFFF
        if new_message:
            if size == length:  # the whole message in one chunk
                return Message(cs.type, cs.stream_id, cs.timestamp, bytes(buf[p:p + size]))
            self._pending += length
            cs.partial = bytearray(buf[p:p + size])
            return _PARTIAL
        partial = cs.partial
        assert partial is not None
        partial += buf[p:p + size]
        if len(partial) < cs.length:
            return _PARTIAL
        cs.partial = None
        self._pending -= cs.length
        return Message(cs.type, cs.stream_id, cs.timestamp, bytes(partial))


class ChunkWriter:
    """Splits messages into chunks for ``writer``; every message starts with a full header."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self.chunk_size = 128

    def write(self, csid: int, type_: int, payload: bytes, stream_id: int = 0,
              timestamp: int = 0) -> None:
        ts = min(timestamp, 0xFFFFFF)
        out = bytearray((csid,))  # fmt 0; csid < 64 for everything this server sends
        out += ts.to_bytes(3, "big") + len(payload).to_bytes(3, "big") + bytes((type_,))
        out += stream_id.to_bytes(4, "little")
        extended = timestamp.to_bytes(4, "big") if ts == 0xFFFFFF else b""
        out += extended
        for pos in range(0, max(len(payload), 1), self.chunk_size):
            if pos:
                out += bytes((0xC0 | csid,)) + extended
            out += payload[pos:pos + self.chunk_size]
        self._writer.write(bytes(out))

    def control(self, type_: int, payload: bytes) -> None:
        """A protocol control message (chunk stream 2, message stream 0)."""
        self.write(2, type_, payload)

    def set_chunk_size(self, size: int) -> None:
        self.control(SET_CHUNK_SIZE, size.to_bytes(4, "big"))
        self.chunk_size = size
