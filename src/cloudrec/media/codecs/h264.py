"""H.264: NAL units, key frames, parameter sets, picture size, AVCC to Annex B.

Every H.264 quirk the service knows is here: splitting and joining access units, finding SPS,
PPS and IDR, putting parameter sets in front of an IDR sent without them, making an access unit
conformant (:func:`conformant_access_unit`), reading the picture size from the SPS, and turning
the length-prefixed (AVCC) framing of FLV and MP4, with its AVCDecoderConfigurationRecord, into
Annex B (:func:`parse_avc_config`, :func:`split_avcc`, :func:`access_unit`).

Only NAL headers are looked at (one byte each), so the per-frame helpers (the room plane's
receive path calls :func:`is_keyframe` and :func:`conformant_access_unit` for every access
unit) cost a few ``bytes.find`` calls in C; nothing here decodes a slice. Pure Python: no PyAV.
"""

from __future__ import annotations

from dataclasses import dataclass

NAL_SLICE = 1
NAL_IDR = 5
NAL_SEI = 6
NAL_SPS = 7
NAL_PPS = 8
NAL_AUD = 9

START_CODE = b"\x00\x00\x00\x01"


def _nal_spans(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each NAL unit's payload in an Annex B byte string, start codes excluded."""
    spans: list[tuple[int, int]] = []
    find = data.find
    pos = find(b"\x00\x00\x01")
    while pos >= 0:
        start = pos + 3
        nxt = find(b"\x00\x00\x01", start)
        end = len(data) if nxt < 0 else nxt
        # The zero byte of a 4-byte start code (and any trailing_zero_8bits) precedes the next
        # start code; NAL units never end in 0x00, so strip it.
        while end > start and data[end - 1] == 0:
            end -= 1
        if end > start:
            spans.append((start, end))
        pos = nxt
    return spans


def split_annexb(data: bytes) -> list[bytes]:
    """The NAL units of an Annex B byte string, without their start codes."""
    return [data[s:e] for s, e in _nal_spans(data)]


def join_annexb(nals: list[bytes]) -> bytes:
    """Annex B byte string of ``nals``, each behind a 4-byte start code."""
    return b"".join(START_CODE + nal for nal in nals)


def nal_type(nal: bytes) -> int:
    return nal[0] & 0x1F


def nal_types(data: bytes) -> list[int]:
    """The NAL unit types of an access unit, in order (the units :func:`_nal_spans` finds)."""
    types: list[int] = []
    find, size = data.find, len(data)
    pos = find(b"\x00\x00\x01")
    while pos >= 0:
        start = pos + 3
        nxt = find(b"\x00\x00\x01", start)
        if start < size and data[start]:  # a non-zero header byte: the unit is not empty
            types.append(data[start] & 0x1F)
        else:  # as _nal_spans: trailing zeros belong to the next start code
            end = size if nxt < 0 else nxt
            while end > start and data[end - 1] == 0:
                end -= 1
            if end > start:
                types.append(data[start] & 0x1F)
        pos = nxt
    return types


def is_keyframe(data: bytes) -> bool:
    """True when the access unit's first slice is an IDR slice (a point where decoding can
    start). Stops at the first slice: the bytes of the slices are never scanned."""
    find = data.find
    i = find(b"\x00\x00\x01")
    while i >= 0:
        i += 3
        if i >= len(data):
            return False
        kind = data[i] & 0x1F
        if kind == 5:  # NAL_IDR (literals: this runs for every received access unit)
            return True
        if kind == 1:  # NAL_SLICE
            return False
        i = find(b"\x00\x00\x01", i)
    return False


def parameter_sets(data: bytes) -> tuple[bytes | None, bytes | None]:
    """The first SPS and the first PPS NAL unit in ``data`` (None where absent)."""
    sps = pps = None
    for s, e in _nal_spans(data):
        kind = data[s] & 0x1F
        if kind == NAL_SPS and sps is None:
            sps = data[s:e]
        elif kind == NAL_PPS and pps is None:
            pps = data[s:e]
    return sps, pps


def with_parameter_sets(data: bytes, sps: bytes | None, pps: bytes | None) -> bytes:
    """``data`` with ``sps``/``pps`` put in front of its slices when it lacks them.

    A segment must decode on its own, so its first IDR has to carry SPS and PPS in band; WebRTC
    senders usually repeat them before each IDR, but nothing obliges them to.
    """
    nals = split_annexb(data)
    kinds = [nal_type(n) for n in nals]
    missing = [
        ps
        for ps, kind in ((sps, NAL_SPS), (pps, NAL_PPS))
        if ps is not None and kind not in kinds
    ]
    if not missing:
        return data
    at = 1 if kinds and kinds[0] == NAL_AUD else 0  # an AUD must stay first
    return join_annexb(nals[:at] + missing + nals[at:])


class ParameterSetCache:
    """Remembers the latest SPS and PPS seen, to repair IDRs sent without them."""

    __slots__ = ("pps", "sps")

    def __init__(self) -> None:
        self.sps: bytes | None = None
        self.pps: bytes | None = None

    def update(self, data: bytes) -> None:
        sps, pps = parameter_sets(data)
        if sps is not None:
            self.sps = sps
        if pps is not None:
            self.pps = pps

    def repair(self, data: bytes) -> bytes:
        return with_parameter_sets(data, self.sps, self.pps)

    def take(self, data: bytes) -> tuple[bytes, bool]:
        """Remember the parameter sets of an access unit; returns it (an IDR that lacks them
        gets the latest ones in front, see :meth:`repair`) and whether it holds an IDR."""
        types = nal_types(data)
        key = NAL_IDR in types
        if NAL_SPS in types or NAL_PPS in types:
            self.update(data)
        if key and (NAL_SPS not in types or NAL_PPS not in types):
            data = self.repair(data)
        return data, key


@dataclass(frozen=True, slots=True)
class AvcConfig:
    """An AVCDecoderConfigurationRecord: NAL length size and the parameter sets."""

    length_size: int
    sps: tuple[bytes, ...]
    pps: tuple[bytes, ...]

    @property
    def annexb(self) -> bytes:
        """The SPS and PPS as an Annex B byte string."""
        return join_annexb(list(self.sps + self.pps))


def parse_avc_config(record: bytes) -> AvcConfig:
    """Reads an AVCDecoderConfigurationRecord (ISO/IEC 14496-15); ValueError when malformed."""
    if len(record) < 7 or record[0] != 1:
        raise ValueError("not an AVCDecoderConfigurationRecord")
    length_size = (record[4] & 3) + 1
    pos, sets = 5, []
    for mask in (0x1F, 0xFF):
        if pos >= len(record):
            raise ValueError("AVCDecoderConfigurationRecord truncated")
        found, pos = read_sized_nals(record, pos + 1, record[pos] & mask,
                                     "AVCDecoderConfigurationRecord")
        sets.append(tuple(found))
    return AvcConfig(length_size, sets[0], sets[1])


def read_sized_nals(record: bytes, pos: int, count: int, what: str) -> tuple[list[bytes], int]:
    """``count`` NAL units from ``pos``, each after its 16-bit size (as avcC and hvcC hold
    them), and the position after them; ValueError naming ``what`` when truncated."""
    nals = []
    for _ in range(count):
        size = int.from_bytes(record[pos:pos + 2], "big")
        nal = record[pos + 2:pos + 2 + size]
        if len(nal) != size or size == 0:
            raise ValueError(f"{what} truncated")
        nals.append(nal)
        pos += 2 + size
    return nals, pos


def join_avcc(nals: list[bytes], length_size: int = 4) -> bytes:
    """NAL units as a length-prefixed (AVCC) access unit: what an MP4 sample holds."""
    return b"".join(len(nal).to_bytes(length_size, "big") + nal for nal in nals)


def split_avcc(data: bytes, length_size: int) -> list[bytes]:
    """The NAL units of a length-prefixed (AVCC) access unit; ValueError when malformed."""
    nals, pos, end = [], 0, len(data)
    while pos < end:
        size = int.from_bytes(data[pos:pos + length_size], "big")
        pos += length_size
        if size == 0 or pos + size > end:
            raise ValueError("AVCC NAL length runs past the access unit")
        nals.append(data[pos:pos + size])
        pos += size
    return nals


def access_unit(nals: list[bytes], keyframe: bool, params: bytes) -> tuple[bytes, bool]:
    """An Annex B access unit from its NAL units, and whether it is a keyframe.

    A keyframe (flagged by the container, or holding an IDR slice) gets ``params`` (the Annex B
    SPS and PPS) in front of its first slice unless it carries an SPS itself; an AUD stays first.
    """
    types = [nal[0] & 0x1F for nal in nals]
    keyframe = keyframe or NAL_IDR in types
    if keyframe and params and NAL_SPS not in types:
        at = 1 if types and types[0] == NAL_AUD else 0
        return join_annexb(nals[:at]) + params + join_annexb(nals[at:]), True
    return join_annexb(nals), keyframe


def conformant_access_unit(data: bytes) -> bytes:
    """An Annex B access unit whose AUD, SEI, SPS and PPS NAL units all precede its first slice
    (H.264 7.4.1.2.3), repeats dropped; ``data`` itself when it already is (the common case,
    decided from NAL headers without copying).

    A WebRTC receiver joins every NAL unit of an RTP timestamp in arrival order, and a sender
    that repeats SPS/PPS before *each* IDR slice of a multi-slice picture (GStreamer's
    ``x264enc tune=zerolatency`` slices frames, ``rtph264pay config-interval=-1`` repeats the
    parameter sets per IDR NAL) yields parameter sets between slices, which decoders and
    parsers take as the start of a new picture: half pictures, and timestamp-less frames in a
    remuxed recording."""
    seen_slice = False
    for kind in nal_types(data):
        if 1 <= kind <= 5:
            seen_slice = True
        elif seen_slice and 6 <= kind <= 9:
            break
    else:
        return data
    aud: list[bytes] = []
    head: list[bytes] = []
    body: list[bytes] = []
    for nal in split_annexb(data):
        kind = nal[0] & 0x1F
        if kind == 9:
            if not aud:
                aud.append(nal)
        elif 6 <= kind <= 8:
            if nal not in head:
                head.append(nal)
        else:
            body.append(nal)
    return join_annexb(aud + head + body)


def picture_size(data: bytes) -> tuple[int, int] | None:
    """The picture size in the first SPS of an access unit, or None when it has none or it
    cannot be read."""
    try:
        for nal in split_annexb(data):
            if nal[0] & 0x1F == NAL_SPS:
                return sps_picture_size(nal)
    except (IndexError, ValueError):
        return None
    return None


class _Bits:
    def __init__(self, data: bytes) -> None:
        # drop emulation prevention bytes (00 00 03 → 00 00)
        self.data = data.replace(b"\x00\x00\x03", b"\x00\x00")
        self.pos = 0

    def bit(self) -> int:
        byte = self.data[self.pos >> 3]
        value = (byte >> (7 - (self.pos & 7))) & 1
        self.pos += 1
        return value

    def bits(self, n: int) -> int:
        value = 0
        for _ in range(n):
            value = (value << 1) | self.bit()
        return value

    def ue(self) -> int:
        zeros = 0
        while self.bit() == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("bad exp-Golomb code")
        return (1 << zeros) - 1 + self.bits(zeros)

    def se(self) -> int:
        v = self.ue()
        return (v + 1) // 2 if v & 1 else -(v // 2)


def sps_picture_size(sps: bytes) -> tuple[int, int]:
    """Width and height (after cropping) from an H.264 sequence parameter set NAL unit."""
    r = _Bits(sps[1:])
    profile = r.bits(8)
    r.bits(16)  # constraint flags, level
    r.ue()  # seq_parameter_set_id
    chroma = 1
    if profile in (100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135):
        chroma = r.ue()
        if chroma == 3:
            r.bit()
        r.ue()
        r.ue()
        r.bit()
        if r.bit():  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma != 3 else 12):
                if r.bit():
                    last, nxt = 8, 8
                    for _ in range(16 if i < 6 else 64):
                        if nxt:
                            nxt = (last + r.se() + 256) % 256
                        last = nxt or last
    r.ue()  # log2_max_frame_num_minus4
    poc_type = r.ue()
    if poc_type == 0:
        r.ue()
    elif poc_type == 1:
        r.bit()
        r.se()
        r.se()
        for _ in range(r.ue()):
            r.se()
    r.ue()  # max_num_ref_frames
    r.bit()
    width_mbs = r.ue() + 1
    height_units = r.ue() + 1
    frame_mbs_only = r.bit()
    if not frame_mbs_only:
        r.bit()
    r.bit()  # direct_8x8_inference_flag
    crop = (0, 0, 0, 0)
    if r.bit():
        crop = (r.ue(), r.ue(), r.ue(), r.ue())
    sub_w, sub_h = (2, 2) if chroma == 1 else (2, 1) if chroma == 2 else (1, 1)
    unit_h = sub_h * (2 - frame_mbs_only)
    width = width_mbs * 16 - sub_w * (crop[0] + crop[1])
    height = height_units * 16 * (2 - frame_mbs_only) - unit_h * (crop[2] + crop[3])
    return width, height
