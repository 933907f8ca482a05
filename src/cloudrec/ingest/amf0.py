"""AMF0, the encoding of RTMP commands and metadata: a decoder bounded for hostile input.

Numbers decode to float, strings to str, objects and ECMA arrays to dict, strict arrays to list;
null, undefined, references and unsupported markers to None. Nesting deeper than
:data:`MAX_DEPTH`, or anything truncated, raises :class:`Amf0Error`.
"""

from __future__ import annotations

import struct
from typing import Any

MAX_DEPTH = 16
_END = b"\x00\x00\x09"


class Amf0Error(ValueError):
    """Bytes that are not AMF0."""


def decode_all(data: bytes) -> list[Any]:
    """Every value in ``data``, in order."""
    values, pos = [], 0
    while pos < len(data):
        value, pos = _decode(data, pos, 0)
        values.append(value)
    return values


def _need(data: bytes, pos: int, n: int) -> None:
    if pos + n > len(data):
        raise Amf0Error("AMF0 value truncated")


def _string(data: bytes, pos: int, width: int) -> tuple[str, int]:
    _need(data, pos, width)
    size = int.from_bytes(data[pos:pos + width], "big")
    pos += width
    _need(data, pos, size)
    return data[pos:pos + size].decode("utf-8", "replace"), pos + size


def _properties(data: bytes, pos: int, depth: int) -> tuple[dict[str, Any], int]:
    out: dict[str, Any] = {}
    while True:
        if data[pos:pos + 3] == _END:
            return out, pos + 3
        key, pos = _string(data, pos, 2)
        if not key and pos < len(data) and data[pos] == 9:  # an end marker after an empty key
            return out, pos + 1
        out[key], pos = _decode(data, pos, depth + 1)


def _decode(data: bytes, pos: int, depth: int) -> tuple[Any, int]:
    if depth > MAX_DEPTH:
        raise Amf0Error("AMF0 nesting too deep")
    _need(data, pos, 1)
    marker, pos = data[pos], pos + 1
    if marker == 0:
        _need(data, pos, 8)
        return struct.unpack_from(">d", data, pos)[0], pos + 8
    if marker == 1:
        _need(data, pos, 1)
        return data[pos] != 0, pos + 1
    if marker == 2:
        return _string(data, pos, 2)
    if marker == 12:
        return _string(data, pos, 4)
    if marker == 3:
        return _properties(data, pos, depth)
    if marker == 8:
        _need(data, pos, 4)
        return _properties(data, pos + 4, depth)
    if marker == 10:
        _need(data, pos, 4)
        count, pos = int.from_bytes(data[pos:pos + 4], "big"), pos + 4
        if count > len(data) - pos:  # every value takes at least one byte
            raise Amf0Error("AMF0 strict array longer than its message")
        items = []
        for _ in range(count):
            item, pos = _decode(data, pos, depth + 1)
            items.append(item)
        return items, pos
    if marker == 11:
        _need(data, pos, 10)
        return struct.unpack_from(">d", data, pos)[0], pos + 10
    if marker == 7:
        _need(data, pos, 2)
        return None, pos + 2
    if marker in (5, 6, 13):
        return None, pos
    if marker == 16:  # typed object: a class name, then properties
        _, pos = _string(data, pos, 2)
        return _properties(data, pos, depth)
    raise Amf0Error(f"AMF0 marker {marker} is not supported")


def encode(*values: Any) -> bytes:
    """AMF0 for None, bool, int/float, str and dict (as an object) values."""
    out = bytearray()
    for value in values:
        _encode(out, value)
    return bytes(out)


def _encode(out: bytearray, value: Any) -> None:
    if value is None:
        out.append(5)
    elif isinstance(value, bool):
        out += bytes((1, int(value)))
    elif isinstance(value, int | float):
        out += b"\x00" + struct.pack(">d", float(value))
    elif isinstance(value, str):
        raw = value.encode()
        out += (b"\x02" + len(raw).to_bytes(2, "big") if len(raw) < 0x10000
                else b"\x0c" + len(raw).to_bytes(4, "big")) + raw
    elif isinstance(value, dict):
        out.append(3)
        for key, item in value.items():
            raw = str(key).encode()
            out += len(raw).to_bytes(2, "big") + raw
            _encode(out, item)
        out += _END
    else:
        raise TypeError(f"cannot encode {type(value).__name__} in AMF0")
