"""H.264 Annex B helpers: split access units into NAL units and find SPS, PPS and IDR.

Only NAL headers are looked at (one byte each), so these run per frame on the remux path at the
cost of a few ``bytes.find`` calls in C; nothing here decodes a slice.
"""

from __future__ import annotations

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
    """The NAL unit types of an access unit, in order."""
    return [data[s] & 0x1F for s, _ in _nal_spans(data)]


def is_idr(data: bytes) -> bool:
    """True when the access unit holds an IDR slice (a point where decoding can start)."""
    return NAL_IDR in nal_types(data)


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

    __slots__ = ("sps", "pps")

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
