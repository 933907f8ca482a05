"""Encoded frames to RTP payloads, once per frame: what every viewer of a publication sends,
less the header (SSRC, sequence number, timestamp, payload type), which is each viewer's own.

- H.264 (RFC 6184, packetization-mode 1): the Annex B access unit is split into NAL units;
  units that fit are aggregated into STAP-A packets (parameter sets with the slice that follows
  them), larger ones are fragmented into FU-A packets of near-equal size.
- VP8 (RFC 7741): the frame is cut into near-equal parts, each behind a one-byte payload
  descriptor (S set on the first).
- Opus (RFC 7587): one packet, the frame as it is.

The marker bit goes on the last payload of a video frame (the sender sets it).
"""

from __future__ import annotations

import struct

__all__ = ["MAX_PAYLOAD", "packetize", "packetize_h264", "packetize_vp8"]

MAX_PAYLOAD = 1200  # bytes of RTP payload: below any path MTU once SRTP, UDP and IP are added

_NAL_STAP_A, _NAL_FU_A = 24, 28
_LENGTH = struct.Struct("!H").pack


def _nal_units(data: bytes) -> list[bytes]:
    """The NAL units of an Annex B byte stream (start codes of 3 or 4 bytes)."""
    units = []
    start = data.find(b"\x00\x00\x01")
    if start < 0:
        return [data] if data else []
    start += 3
    while True:
        nxt = data.find(b"\x00\x00\x01", start)
        if nxt < 0:
            unit = data[start:]
        else:
            end = nxt - 1 if data[nxt - 1] == 0 else nxt
            unit = data[start:end]
        while unit and unit[-1] == 0:  # trailing zero bytes belong to the next start code
            unit = unit[:-1]
        if unit:
            units.append(unit)
        if nxt < 0:
            return units
        start = nxt + 3


def _fu_a(unit: bytes, limit: int) -> list[bytes]:
    body = memoryview(unit)[1:]
    count = -(-len(body) // (limit - 2))
    size, larger = divmod(len(body), count)
    indicator = (unit[0] & 0xE0) | _NAL_FU_A
    nal_type = unit[0] & 0x1F
    out = []
    pos = 0
    for i in range(count):
        n = size + (1 if i < larger else 0)
        flags = 0x80 if i == 0 else (0x40 if i == count - 1 else 0)
        out.append(bytes((indicator, flags | nal_type)) + body[pos:pos + n])
        pos += n
    return out


def packetize_h264(data: bytes, limit: int = MAX_PAYLOAD) -> list[bytes]:
    """RTP payloads of one H.264 access unit (Annex B)."""
    out: list[bytes] = []
    group: list[bytes] = []
    group_size = 1

    def flush() -> None:
        if len(group) == 1:
            out.append(group[0])
        elif group:
            nri = max(u[0] & 0x60 for u in group)
            forbidden = max(u[0] & 0x80 for u in group)
            out.append(bytes((forbidden | nri | _NAL_STAP_A,))
                       + b"".join(_LENGTH(len(u)) + u for u in group))
        group.clear()

    for unit in _nal_units(data):
        if len(unit) > limit:
            flush()
            group_size = 1
            out.extend(_fu_a(unit, limit))
            continue
        if group_size + 2 + len(unit) > limit:
            flush()
            group_size = 1
        group.append(unit)
        group_size += 2 + len(unit)
    flush()
    return out


def packetize_vp8(data: bytes, limit: int = MAX_PAYLOAD) -> list[bytes]:
    """RTP payloads of one VP8 frame, each behind a one-byte descriptor."""
    if not data:
        return []
    count = -(-len(data) // (limit - 1))
    size, larger = divmod(len(data), count)
    view = memoryview(data)
    out = []
    pos = 0
    for i in range(count):
        n = size + (1 if i < larger else 0)
        out.append((b"\x10" if i == 0 else b"\x00") + view[pos:pos + n])
        pos += n
    return out


def packetize(codec: str, data: bytes) -> list[bytes]:
    """The RTP payloads of one frame of ``codec`` ("h264", "vp8", or an audio codec)."""
    if codec == "h264":
        return packetize_h264(data)
    if codec == "vp8":
        return packetize_vp8(data)
    return [data]
