"""What a publication sends, read from its encoded frames: picture size from the bitstream's
headers, frame rate, bit rate, codecs."""

from __future__ import annotations

import asyncio
import time
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
        await asyncio.sleep(1.0)
        at, [first] = time.monotonic(), whip_server.hub.publications()
        await asyncio.sleep(2.5)
        at2, [info] = time.monotonic(), whip_server.hub.publications()
    finally:
        await pub.stop()
    assert (info["roomid"], info["uid"], info["width"], info["height"]) == (
        "stats", "alice", 320, 240)
    assert info["video_codec"] == "h264" and info["audio_codec"] == "opus"
    # The rates over the last window against the frames counted over these 2.5 s: the same
    # while the publisher keeps its pace (15 fps and 20 ms Opus packets; a box too busy to
    # encode sends fewer, and a rate read off a clock would fail there).
    for kind, paced in (("video", 15), ("audio", 50)):
        sent = (info[kind]["frames"] - first[kind]["frames"]) / (at2 - at)
        assert 0.3 * paced <= sent <= 1.15 * paced, (kind, sent)
        assert 0.75 * sent <= info[kind]["fps"] <= 1.25 * sent, (kind, sent, info[kind])
    assert info["video"]["kbps"] > 20
