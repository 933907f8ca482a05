"""VP8 (RFC 6386): key frames and picture size, read from a frame's first bytes.

Pure Python: no PyAV. Nothing here decodes a frame.
"""

from __future__ import annotations

_START_CODE = b"\x9d\x01\x2a"  # after the 3-byte frame tag of a key frame


def is_keyframe(data: bytes) -> bool:
    """Frame tag: bit 0 of the first byte is 0 on a key frame (RFC 6386 9.1)."""
    return bool(data) and not data[0] & 1


def picture_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a key frame's header (scaling bits dropped), or None when
    ``data`` does not start with one."""
    if len(data) >= 10 and data[3:6] == _START_CODE:
        return (int.from_bytes(data[6:8], "little") & 0x3FFF,
                int.from_bytes(data[8:10], "little") & 0x3FFF)
    return None
