"""The depacketizer of each codec, by its lower-case SDP name: one module per codec
(:mod:`cloudrec.rtp.h264`, :mod:`cloudrec.rtp.vp8`).

A codec's ``piece`` turns one packet's payload into its piece of the frame, so a frame is the
``b"".join`` of its packets' pieces in sequence order, made once when the frame is complete;
``starts_frame`` tells whether a packet can begin a frame. Opus needs neither: a packet is a
frame.
"""

from __future__ import annotations

from collections.abc import Callable

from cloudrec.rtp import h264, vp8

__all__ = ["piece_for", "starts_frame_for"]

_PIECES: dict[str, Callable[[bytes], bytes]] = {"h264": h264.piece, "vp8": vp8.piece}
_STARTS: dict[str, Callable[[bytes], bool]] = {"h264": h264.starts_frame,
                                               "vp8": vp8.starts_frame}


def piece_for(codec: str) -> Callable[[bytes], bytes] | None:
    """The piece function of a codec name; None for Opus (and anything else): the payload is
    the frame."""
    return _PIECES.get(codec)


def starts_frame_for(codec: str) -> Callable[[bytes], bool] | None:
    return _STARTS.get(codec)
