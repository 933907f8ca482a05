"""Codec helpers, one module per codec: the only places that know a codec's bitstream.

    h264    Annex B split/join, NAL types, key frames, parameter sets, SPS picture size,
            conformant access units, AVCC and its AVCDecoderConfigurationRecord to Annex B
    vp8     key frames, picture size
    aac     AudioSpecificConfig, ADTS headers written (any rate, channels, object type) and read
    opus    samples in a packet, from its TOC byte

Pure Python leaves (no PyAV, no aiortc): the room plane's receive path calls them per frame.
"""

from __future__ import annotations

from collections.abc import Callable

from cloudrec.media.codecs import aac, h264, opus, vp8

__all__ = ["UnsupportedCodec", "aac", "h264", "keyframe_detector", "opus", "picture_size", "vp8"]


class UnsupportedCodec(ValueError):
    """A codec the service cannot decode; its text (``codec X not supported``) names it."""

    def __init__(self, codec: str) -> None:
        super().__init__(f"codec {codec} not supported")
        self.codec = codec


def _always(data: bytes) -> bool:
    return True


def keyframe_detector(codec_name: str) -> Callable[[bytes], bool]:
    """The keyframe test for a codec name (``"h264"``, ``"vp8"``, anything else: always)."""
    if codec_name == "h264":
        return h264.is_keyframe
    if codec_name == "vp8":
        return vp8.is_keyframe
    return _always


def picture_size(codec: str, data: bytes) -> tuple[int, int] | None:
    """The picture size in a key frame's headers, or None when it cannot be read."""
    if codec == "h264":
        return h264.picture_size(data)
    if codec == "vp8":
        return vp8.picture_size(data)
    return None
