"""``base64seidata`` as an H.264 SEI ``user_data_unregistered`` message in every frame.

The SEI NAL unit is built once (:func:`sei_nal`): payload type 5, the payload size coded as
0xFF bytes plus a remainder, our 16-byte UUID (:data:`SEI_UUID`) and the user bytes, the RBSP
stop bit, then emulation prevention (a 0x03 after each 0x00 0x00 that precedes a byte ≤ 3).
:func:`insert_sei` puts it in an Annex B access unit after the AUD, SPS, PPS and any other SEI
and right before the first slice, where H.264 wants SEI (7.4.1.2.3).

Why not FFmpeg's ``h264_metadata`` bitstream filter (``sei_user_data=UUID+string``), which
PyAV 18.1's FFmpeg 8.1 has: tried with ``av.bitstream.BitStreamFilterContext``, it inserts the
message only into the first access unit and those that carry an SPS (keyframes), not into every
frame as the seed asks, and it takes the data as a C string, so the arbitrary bytes a
base64 string decodes to (NUL included) cannot go through it.
"""

from __future__ import annotations

import uuid

from cloudrec.media.codecs.h264 import NAL_SEI, join_annexb, nal_type, split_annexb

SEI_UUID = uuid.UUID("6c1f0e5a-8d3b-4c7e-9a21-c10dec0de5e1").bytes  # cloudrec's user data
USER_DATA_UNREGISTERED = 5
_VCL = frozenset(range(1, 6))  # coded slice NAL unit types


def escape_rbsp(rbsp: bytes) -> bytes:
    """Insert emulation-prevention bytes: 00 00 0x (x ≤ 3) → 00 00 03 0x."""
    if b"\x00\x00" not in rbsp:
        return rbsp
    out = bytearray()
    zeros = 0
    for byte in rbsp:
        if zeros >= 2 and byte <= 3:
            out.append(3)
            zeros = 0
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


def unescape_rbsp(ebsp: bytes) -> bytes:
    """Remove emulation-prevention bytes (00 00 03 → 00 00)."""
    if b"\x00\x00\x03" not in ebsp:
        return ebsp
    out = bytearray()
    zeros = 0
    for byte in ebsp:
        if zeros >= 2 and byte == 3:
            zeros = 0
            continue
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


def _ff_coded(value: int) -> bytes:
    return b"\xff" * (value // 255) + bytes((value % 255,))


def sei_nal(data: bytes, uuid_bytes: bytes = SEI_UUID) -> bytes:
    """An SEI NAL unit (no start code) with one user_data_unregistered message."""
    if len(uuid_bytes) != 16:
        raise ValueError("the SEI UUID must be 16 bytes")
    payload = uuid_bytes + data
    rbsp = _ff_coded(USER_DATA_UNREGISTERED) + _ff_coded(len(payload)) + payload + b"\x80"
    return bytes((NAL_SEI,)) + escape_rbsp(rbsp)  # nal_ref_idc 0, type 6


def insert_sei(access_unit: bytes, nal: bytes) -> bytes:
    """``access_unit`` (Annex B) with the NAL unit ``nal`` before its first slice.

    An access unit without a slice is returned unchanged.
    """
    nals = split_annexb(access_unit)
    for i, unit in enumerate(nals):
        if nal_type(unit) in _VCL:
            return join_annexb(nals[:i] + [nal] + nals[i:])
    return access_unit


class SeiInserter:
    """Puts the same user data into every access unit; the NAL unit is built once."""

    def __init__(self, data: bytes, uuid_bytes: bytes = SEI_UUID) -> None:
        self.nal = sei_nal(data, uuid_bytes)

    def __call__(self, access_unit: bytes) -> bytes:
        return insert_sei(access_unit, self.nal)


def _sei_messages(nal: bytes) -> list[tuple[int, bytes]]:
    """(payload type, payload) of each message in an SEI NAL unit."""
    rbsp = unescape_rbsp(nal[1:])
    messages: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(rbsp) and rbsp[pos:] != b"\x80":
        values = []
        for _ in range(2):  # payload type, then payload size
            value = 0
            while pos < len(rbsp) and rbsp[pos] == 0xFF:
                value += 255
                pos += 1
            if pos >= len(rbsp):
                return messages
            values.append(value + rbsp[pos])
            pos += 1
        kind, size = values
        messages.append((kind, rbsp[pos : pos + size]))
        pos += size
    return messages


def find_sei_payloads(annexb: bytes, uuid_bytes: bytes | None = SEI_UUID) -> list[bytes]:
    """The user data of the user_data_unregistered SEI messages in ``annexb``.

    With a UUID (ours by default), the data after it of the messages that carry it; with
    ``None``, every message's whole payload (UUID included).
    """
    found = []
    for nal in split_annexb(annexb):
        if nal_type(nal) != NAL_SEI:
            continue
        for kind, payload in _sei_messages(nal):
            if kind != USER_DATA_UNREGISTERED:
                continue
            if uuid_bytes is None:
                found.append(payload)
            elif payload[:16] == uuid_bytes:
                found.append(payload[16:])
    return found
