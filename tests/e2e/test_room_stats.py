"""What a publication sends, read from its encoded frames: picture size from the bitstream's
headers, frame rate, bit rate, codecs."""

from __future__ import annotations

import asyncio
from fractions import Fraction

import av
import numpy as np
import pytest

from cloudrec.media.codecs import picture_size
from cloudrec.webrtc.whip_client import Publisher
from tests.e2e.conftest import WhipServer


def keyframe(codec: str, width: int, height: int) -> bytes:
    enc = av.CodecContext.create("libx264" if codec == "h264" else "libvpx", "w")
    enc.width, enc.height, enc.pix_fmt = width, height, "yuv420p"
    enc.time_base = Fraction(1, 15)
    enc.open()
    frame = av.VideoFrame.from_ndarray(np.zeros((height * 3 // 2, width), np.uint8),
                                       format="yuv420p")
    frame.pts = 0
    data = bytes((enc.encode(frame) + enc.encode(None))[0])
    return bytes(enc.extradata or b"") + data if codec == "h264" else data


@pytest.mark.parametrize("codec,size", [("h264", (320, 240)), ("h264", (1920, 1080)),
                                        ("h264", (642, 362)), ("vp8", (640, 480))])
def test_picture_size_from_headers(codec: str, size: tuple[int, int]) -> None:
    assert picture_size(codec, keyframe(codec, *size)) == size


def test_unreadable_headers_give_no_size() -> None:
    assert picture_size("h264", b"\x00\x00\x01\x67") is None
    assert picture_size("vp8", b"\x00" * 4) is None


async def test_a_publication_reports_what_it_sends(whip_server: WhipServer) -> None:
    pub = Publisher(whip_server.url("stats", "alice"), whip_server.token("stats", "alice"),
                    width=320, height=240, fps=15)
    await pub.start()
    await pub.wait_connected()
    try:
        await asyncio.sleep(3.5)
        [info] = whip_server.hub.publications()
    finally:
        await pub.stop()
    assert (info["roomid"], info["uid"], info["width"], info["height"]) == (
        "stats", "alice", 320, 240)
    assert info["video_codec"] == "h264" and info["audio_codec"] == "opus"
    assert 10 <= info["video"]["fps"] <= 17 and info["video"]["kbps"] > 20
    assert 40 <= info["audio"]["fps"] <= 55  # 20 ms Opus packets
