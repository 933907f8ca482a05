"""AAC (ISO/IEC 14496-3): AudioSpecificConfig, ADTS headers written and read.

Every AAC framing the service knows is here: reading the AudioSpecificConfig that RTMP and MP4
carry out of band (:func:`parse_asc`), writing the 7-byte ADTS header that MPEG-TS carries in
band for any sample rate, channel count and object type (:func:`adts_header`,
:meth:`AacConfig.adts`) and reading one back (:func:`parse_adts`, :func:`adts_samples`).

Pure Python: no PyAV. Malformed input raises :class:`ValueError` (or gives None where stated).
"""

from __future__ import annotations

from dataclasses import dataclass

RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000,
         7350)  # sampling_frequency_index → Hz
AAC_LC = 2  # audio object type of AAC-LC
FRAME_SAMPLES = 1024  # samples per raw AAC-LC frame (per raw data block of an ADTS frame)
ADTS_SIZE = 7  # an ADTS header without CRC


def rate_index(sample_rate: int) -> int:
    """The sampling_frequency_index of ``sample_rate``; ValueError when ADTS has none."""
    try:
        return RATES.index(sample_rate)
    except ValueError:
        raise ValueError(f"{sample_rate} Hz has no AAC sampling frequency index") from None


def adts_header(payload_size: int, sample_rate: int = 48000, channels: int = 2,
                object_type: int = AAC_LC) -> bytes:
    """The 7-byte ADTS header (no CRC) of one raw AAC frame of ``payload_size`` bytes."""
    return _header(payload_size, object_type, rate_index(sample_rate), channels)


def _header(payload_size: int, object_type: int, index: int, channels: int) -> bytes:
    size = payload_size + ADTS_SIZE
    if size > 0x1FFF:
        raise ValueError(f"AAC frame of {payload_size} bytes is too big for ADTS")
    if not 1 <= object_type <= 4:
        raise ValueError(f"AAC object type {object_type} cannot be carried in ADTS")
    if not 0 <= channels <= 7:
        raise ValueError(f"{channels} is not an AAC channel configuration")
    profile = object_type - 1
    return bytes((0xFF, 0xF1, (profile << 6) | (index << 2) | (channels >> 2),
                  ((channels & 3) << 6) | (size >> 11), (size >> 3) & 0xFF,
                  ((size & 7) << 5) | 0x1F, 0xFC))


@dataclass(frozen=True, slots=True)
class AacConfig:
    """What an ADTS header says and needs: object type, sampling frequency index, channels."""

    object_type: int  # 2 for AAC-LC; the core type for HE-AAC (SBR/PS) configurations
    rate_index: int
    channels: int  # channel configuration: 1 mono, 2 stereo, ... (0: defined in the stream)

    @property
    def sample_rate(self) -> int:
        return RATES[self.rate_index]

    @property
    def is_lc(self) -> bool:
        return self.object_type == AAC_LC

    def adts(self, payload: bytes) -> bytes:
        """``payload`` (one raw AAC frame) behind its 7-byte ADTS header."""
        return _header(len(payload), min(self.object_type, 4), self.rate_index,
                       self.channels) + payload


def parse_asc(asc: bytes) -> AacConfig:
    """Reads an AudioSpecificConfig: object type, sample rate index and channel configuration.

    HE-AAC (explicit SBR/PS) gives its core object type and the core's rate, as ADTS wants.
    """
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

    def frequency_index() -> int:
        index = take(4)
        if index == 15:  # an explicit rate: ADTS has no room for it, take the nearest
            rate = take(24)
            return min(range(len(RATES)), key=lambda i: abs(RATES[i] - rate))
        if index >= len(RATES):
            raise ValueError(f"AAC sampling frequency index {index} is reserved")
        return index

    kind, index = object_type(), frequency_index()
    channels = take(4)
    if kind in (5, 29):  # explicit SBR/PS: the extension rate, then the core object type
        frequency_index()
        kind = object_type()
    if not 1 <= kind <= 4:
        raise ValueError(f"AAC object type {kind} cannot be carried in ADTS")
    return AacConfig(kind, index, channels)


def parse_adts(frame: bytes) -> AacConfig | None:
    """The configuration in an ADTS header, or None when ``frame`` does not start with one."""
    if len(frame) < ADTS_SIZE or frame[0] != 0xFF or frame[1] & 0xF6 != 0xF0:
        return None
    index = (frame[2] >> 2) & 0x0F
    if index >= len(RATES):
        return None
    return AacConfig((frame[2] >> 6) + 1, index, ((frame[2] & 1) << 2) | (frame[3] >> 6))


def adts_length(frame: bytes) -> int:
    """The frame length an ADTS header gives (header included)."""
    return ((frame[3] & 3) << 11) | (frame[4] << 3) | (frame[5] >> 5)


def adts_samples(frame: bytes) -> int:
    """Samples (per channel) in an ADTS frame: 1024 per raw data block."""
    return FRAME_SAMPLES * ((frame[6] & 3) + 1)
