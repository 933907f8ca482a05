"""The relay's wire format: length-prefixed binary messages over one TCP connection per room.

Every message is ``length:u32 | type:u8 | body`` (big endian; ``length`` counts type and body).
A frame is ``slot:u16 | flags:u8 | timestamp:i64 | age_us:u32 | [wallclock:f64] | payload``: 20
bytes of overhead with the prefix (28 with ``wallclock``, present when ``flags`` has
``FLAG_WALL``: the frame's capture time on its publisher's clock, from sender reports), because
what is constant per publication and kind (uid, kind, codec, clock rate, epoch) is declared once
in a ``STREAM`` message and named by its slot afterwards. Presence and the handshake are compact
JSON: they are rare.

``age_us`` is how long the frame had been on the server's host when it was sent: monotonic
clocks are per host, so the receiver sets ``arrival`` to its own clock minus the age (network
latency left out).

Handshake (mutual, HMAC-SHA256 with the shared secret, so neither end believes an impostor)::

    server → HELLO   version:u8 | server_nonce:16
    client → AUTH    client_nonce:16 | mac:32 | {"appid": .., "roomid": ..}
                     mac = HMAC(secret, "cloudrec-relay/1 client" | server_nonce
                                        | client_nonce | json)
    server → OK      mac:32 = HMAC(secret, "cloudrec-relay/1 server" | client_nonce
                                           | server_nonce)
          or ERROR   reason (utf-8), then closes
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import struct
from typing import Any

VERSION = 2  # 2: frames may carry a wall-clock time

HELLO, AUTH, OK, ERROR = b"h"[0], b"a"[0], b"o"[0], b"e"[0]
PUBLISHED, UNPUBLISHED, STREAM, FRAME = b"p"[0], b"u"[0], b"s"[0], b"f"[0]
KEYFRAME, PING = b"k"[0], b"."[0]

PREFIX = struct.Struct("!IB")  # length, type
FRAME_HEAD = struct.Struct("!IBHBqI")  # length, type, slot, flags, timestamp, age_us
FRAME_FIELDS = struct.Struct("!HBqI")
SLOT = struct.Struct("!H")
WALL = struct.Struct("!d")
FLAG_VIDEO, FLAG_KEY, FLAG_WALL = 1, 2, 4

NONCE_BYTES = 16
MAC_BYTES = 32
MAX_HANDSHAKE = 4096  # any longer message before authentication is refused
MAX_MESSAGE = 16 << 20  # a 16 MiB access unit is far beyond any real one


class RelayError(Exception):
    """The relay connection failed or broke the protocol."""


class RelayRefused(RelayError):
    """The other end did not authenticate (a wrong secret) or refused the request."""


def secret_bytes(secret: str | bytes) -> bytes:
    return secret if isinstance(secret, bytes) else secret.encode()


def client_mac(secret: bytes, server_nonce: bytes, client_nonce: bytes, request: bytes) -> bytes:
    msg = b"cloudrec-relay/1 client" + server_nonce + client_nonce + request
    return hmac.new(secret, msg, hashlib.sha256).digest()


def server_mac(secret: bytes, server_nonce: bytes, client_nonce: bytes) -> bytes:
    msg = b"cloudrec-relay/1 server" + client_nonce + server_nonce
    return hmac.new(secret, msg, hashlib.sha256).digest()


def message(kind: int, body: bytes = b"") -> bytes:
    return PREFIX.pack(len(body) + 1, kind) + body


def json_message(kind: int, obj: Any) -> bytes:
    return message(kind, json.dumps(obj, separators=(",", ":")).encode())


def frame_message(slot: int, video: bool, keyframe: bool, timestamp: int, age_us: int,
                  data: bytes, wallclock: float | None = None) -> bytes:
    flags = (FLAG_VIDEO if video else 0) | (FLAG_KEY if keyframe else 0)
    age = min(max(age_us, 0), 0xFFFFFFFF)
    if wallclock is None:
        return FRAME_HEAD.pack(len(data) + 16, FRAME, slot, flags, timestamp, age) + data
    return FRAME_HEAD.pack(len(data) + 24, FRAME, slot, flags | FLAG_WALL, timestamp,
                           age) + WALL.pack(wallclock) + data


async def read_message(reader: asyncio.StreamReader, limit: int = MAX_MESSAGE
                       ) -> tuple[int, bytes]:
    """The next ``(type, body)``, for the rare messages (the link reads frames itself, so the
    payload is not copied once more out of the body)."""
    length, kind = PREFIX.unpack(await reader.readexactly(PREFIX.size))
    if not 1 <= length <= limit:
        raise RelayError(f"message of {length} bytes refused")
    return kind, await reader.readexactly(length - 1) if length > 1 else b""
