"""VP8 RTP payloads (RFC 7741) to the bytes of a frame: the payload after its descriptor."""

from __future__ import annotations

__all__ = ["piece", "starts_frame"]


def piece(payload: bytes) -> bytes:
    """The VP8 payload after its descriptor (X, then I/L/T/K extensions)."""
    if not payload:
        return b""
    pos = 1
    if payload[0] & 0x80:  # X: extension byte
        if len(payload) < 2:
            return b""
        ext = payload[1]
        pos = 2
        if ext & 0x80:  # I: picture id, 7 or 15 bits
            if pos >= len(payload):
                return b""
            pos += 2 if payload[pos] & 0x80 else 1
        if ext & 0x40:  # L: TL0PICIDX
            pos += 1
        if ext & 0x30:  # T and/or K: one byte
            pos += 1
    return payload[pos:]


def starts_frame(payload: bytes) -> bool:
    """S bit set and partition 0."""
    return bool(payload) and payload[0] & 0x1F == 0x10
