"""H.264 and AAC framing: AVCC to Annex B, parameter sets on keyframes, ADTS headers.

Pure functions over bytes, shared by the FLV (RTMP) and MPEG-TS (SRT) paths. Malformed input
raises :class:`ValueError`.
"""

from __future__ import annotations

from dataclasses import dataclass

START = b"\x00\x00\x00\x01"
NAL_IDR, NAL_SPS, NAL_PPS, NAL_AUD = 5, 7, 8, 9
AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000,
             7350)


@dataclass(frozen=True, slots=True)
class AvcConfig:
    """An AVCDecoderConfigurationRecord: NAL length size and the parameter sets."""

    length_size: int
    sps: tuple[bytes, ...]
    pps: tuple[bytes, ...]

    @property
    def annexb(self) -> bytes:
        return b"".join(START + nal for nal in self.sps + self.pps)


def parse_avc_config(record: bytes) -> AvcConfig:
    """Reads an AVCDecoderConfigurationRecord (ISO/IEC 14496-15)."""
    if len(record) < 7 or record[0] != 1:
        raise ValueError("not an AVCDecoderConfigurationRecord")
    length_size = (record[4] & 3) + 1
    pos, sets = 5, []
    for mask in (0x1F, 0xFF):
        if pos >= len(record):
            raise ValueError("AVCDecoderConfigurationRecord truncated")
        count, pos, found = record[pos] & mask, pos + 1, []
        for _ in range(count):
            size = int.from_bytes(record[pos:pos + 2], "big")
            nal = record[pos + 2:pos + 2 + size]
            if len(nal) != size or size == 0:
                raise ValueError("AVCDecoderConfigurationRecord truncated")
            found.append(nal)
            pos += 2 + size
        sets.append(tuple(found))
    return AvcConfig(length_size, sets[0], sets[1])


def split_avcc(data: bytes, length_size: int) -> list[bytes]:
    """The NAL units of a length-prefixed (AVCC) access unit."""
    nals, pos, end = [], 0, len(data)
    while pos < end:
        size = int.from_bytes(data[pos:pos + length_size], "big")
        pos += length_size
        if size == 0 or pos + size > end:
            raise ValueError("AVCC NAL length runs past the access unit")
        nals.append(data[pos:pos + size])
        pos += size
    return nals


def split_annexb(data: bytes) -> list[bytes]:
    """The NAL units of an Annex B byte stream (start codes of 3 or 4 bytes)."""
    nals, pos = [], data.find(b"\x00\x00\x01")
    while pos >= 0:
        start = pos + 3
        pos = data.find(b"\x00\x00\x01", start)
        nal = data[start:pos if pos >= 0 else len(data)]
        nal = nal.rstrip(b"\x00") if pos >= 0 else nal
        if nal:
            nals.append(nal)
    return nals


def access_unit(nals: list[bytes], keyframe: bool, params: bytes) -> tuple[bytes, bool]:
    """An Annex B access unit from its NAL units, and whether it is a keyframe.

    A keyframe (flagged by the container, or holding an IDR slice) gets ``params`` (the Annex B
    SPS and PPS) in front of its first slice unless it carries an SPS itself.
    """
    types = [nal[0] & 0x1F for nal in nals]
    keyframe = keyframe or NAL_IDR in types
    if keyframe and params and NAL_SPS not in types:
        at = 1 if types and types[0] == NAL_AUD else 0
        return (b"".join(START + nal for nal in nals[:at]) + params
                + b"".join(START + nal for nal in nals[at:])), True
    return b"".join(START + nal for nal in nals), keyframe


@dataclass(frozen=True, slots=True)
class AacConfig:
    """What an ADTS header needs from an AudioSpecificConfig (ISO/IEC 14496-3)."""

    object_type: int  # 2 for AAC-LC; the core type for HE-AAC (SBR/PS) configurations
    rate_index: int
    channels: int

    @property
    def sample_rate(self) -> int:
        return AAC_RATES[self.rate_index]

    def adts(self, payload: bytes) -> bytes:
        """``payload`` (one raw AAC frame) behind its 7-byte ADTS header."""
        size = len(payload) + 7
        if size > 0x1FFF:
            raise ValueError(f"AAC frame of {len(payload)} bytes is too big for ADTS")
        profile = min(self.object_type, 4) - 1
        header = bytes((0xFF, 0xF1, (profile << 6) | (self.rate_index << 2) | (self.channels >> 2),
                        ((self.channels & 3) << 6) | (size >> 11), (size >> 3) & 0xFF,
                        ((size & 7) << 5) | 0x1F, 0xFC))
        return header + payload


def parse_asc(asc: bytes) -> AacConfig:
    """Reads an AudioSpecificConfig: object type, sample rate index and channel configuration."""
    if len(asc) < 2:
        raise ValueError("AudioSpecificConfig truncated")
    bits = int.from_bytes(asc[:8].ljust(8, b"\x00"), "big")
    pos = 64

    def take(n: int) -> int:
        nonlocal pos
        pos -= n
        if pos < 0:
            raise ValueError("AudioSpecificConfig truncated")
        return (bits >> pos) & ((1 << n) - 1)

    def object_type() -> int:
        value = take(5)
        return 32 + take(6) if value == 31 else value

    def rate_index() -> int:
        index = take(4)
        if index == 15:  # an explicit rate: ADTS has no room for it, take the nearest
            rate = take(24)
            return min(range(len(AAC_RATES)), key=lambda i: abs(AAC_RATES[i] - rate))
        if index >= len(AAC_RATES):
            raise ValueError(f"AAC sampling frequency index {index} is reserved")
        return index

    kind, index = object_type(), rate_index()
    channels = take(4)
    if kind in (5, 29):  # explicit SBR/PS: the extension rate, then the core object type
        rate_index()
        kind = object_type()
    if not 1 <= kind <= 4:
        raise ValueError(f"AAC object type {kind} cannot be carried in ADTS")
    return AacConfig(kind, index, channels)


def parse_adts(frame: bytes) -> AacConfig | None:
    """The configuration in an ADTS header, or None when ``frame`` does not start with one."""
    if len(frame) < 7 or frame[0] != 0xFF or frame[1] & 0xF6 != 0xF0:
        return None
    index = (frame[2] >> 2) & 0x0F
    if index >= len(AAC_RATES):
        return None
    return AacConfig((frame[2] >> 6) + 1, index, ((frame[2] & 1) << 2) | (frame[3] >> 6))
