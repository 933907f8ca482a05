"""Opus (RFC 6716): what a packet's TOC byte says, read without decoding."""

from __future__ import annotations


def packet_samples(data: bytes) -> int:
    """Samples (48 kHz) in one Opus packet, from its TOC byte (RFC 6716 section 3.1)."""
    if not data:
        return 0
    config, code = data[0] >> 3, data[0] & 0x03
    if config < 12:  # SILK: 10, 20, 40, 60 ms
        size = (480, 960, 1920, 2880)[config % 4]
    elif config < 16:  # hybrid: 10, 20 ms
        size = (480, 960)[config % 2]
    else:  # CELT: 2.5, 5, 10, 20 ms
        size = (120, 240, 480, 960)[config % 4]
    if code == 0:
        count = 1
    elif code in (1, 2):
        count = 2
    else:
        count = data[1] & 0x3F if len(data) > 1 else 0
    return size * count
