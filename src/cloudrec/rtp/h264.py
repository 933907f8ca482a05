"""H.264 RTP payloads (RFC 6184) to the bytes of an Annex B access unit.

:func:`piece` turns one packet's payload into its piece of the frame, so an access unit is the
``b"".join`` of its packets' pieces in sequence order. Pieces carry 4-byte Annex B start codes
(what :class:`~cloudrec.mediatypes.EncodedFrame` promises); aggregation and fragmentation types
that WebRTC does not use (STAP-B, MTAP, FU-B) give an empty piece.
"""

from __future__ import annotations

__all__ = ["piece", "starts_frame"]

_START = b"\x00\x00\x00\x01"


def piece(payload: bytes) -> bytes:
    if not payload:
        return b""
    nal_type = payload[0] & 0x1F
    if nal_type < 24:  # a single NAL unit
        return _START + payload
    if nal_type == 28:  # FU-A
        if len(payload) < 2:
            return b""
        header = payload[1]
        if header & 0x80:  # start of the fragmented NAL unit: rebuild its header
            return _START + bytes(((payload[0] & 0xE0) | (header & 0x1F),)) + payload[2:]
        return payload[2:]
    if nal_type == 24:  # STAP-A: 16-bit sizes, each followed by a NAL unit
        parts = []
        pos, end = 1, len(payload)
        while pos + 2 <= end:
            size = (payload[pos] << 8) | payload[pos + 1]
            pos += 2
            if size == 0 or pos + size > end:
                break
            parts.append(_START)
            parts.append(payload[pos:pos + size])
            pos += size
        return b"".join(parts)
    return b""


def starts_frame(payload: bytes) -> bool:
    """Whether the packet can be the first of an access unit: an AUD, SEI or parameter set, an
    aggregate (WebRTC senders put SPS/PPS in STAP-A), or the start of a slice whose
    ``first_mb_in_slice`` is 0 (its ue(v) code is a single 1 bit)."""
    if len(payload) < 2:
        return False
    nal_type = payload[0] & 0x1F
    if nal_type == 28:
        if not payload[1] & 0x80 or len(payload) < 3:
            return False
        nal_type, first = payload[1] & 0x1F, payload[2]
    else:
        first = payload[1]
    if nal_type in (6, 7, 8, 9, 24):
        return True
    return nal_type in (1, 5) and bool(first & 0x80)
