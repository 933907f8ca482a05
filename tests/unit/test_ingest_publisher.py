"""The worker's push publisher: a byte stream in, a publication of the room out; garbage, a
second publish of the uid and a link that ends, each with its reason; memory stays bounded."""

from __future__ import annotations

import asyncio
import random
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cloudrec.ingest.publisher import PushIngest
from cloudrec.rooms import RoomHub


@pytest.fixture(scope="module")
def flv(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = Path(tmp_path_factory.mktemp("flv")) / "clip.flv"
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc=size=160x120:rate=15", "-f", "lavfi", "-i",
                    "sine=sample_rate=48000", "-t", "2", "-c:v", "libx264", "-g", "15",
                    "-pix_fmt", "yuv420p", "-c:a", "aac", str(path)], check=True)
    return path.read_bytes()


async def chunks(data: bytes, size: int = 4096, pause: float = 0.0,
                 hold: asyncio.Event | None = None) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]
        await asyncio.sleep(pause)
    if hold is not None:
        await hold.wait()


async def test_flv_becomes_a_publication_and_ends_with_the_link(flv: bytes) -> None:
    hub = RoomHub()
    sub = hub.subscribe(1, "r")
    reason = await PushIngest(hub).run(1, "r", "u", "rtmp", "flv", chunks(flv))
    assert reason == "unpublished"
    items = []
    while sub.qsize():
        items.append(sub.get_nowait())
    frames = [i[1] for i in items if isinstance(i, tuple)]
    assert {(f.kind, f.codec) for f in frames} == {("video", "h264"), ("audio", "aac")}
    assert sum(f.kind == "video" for f in frames) == 30
    assert [e.kind for e in items if not isinstance(e, tuple)] == ["published", "unpublished"]
    assert not hub.publications()


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("fmt", ["flv", "mpegts"])
async def test_garbage_ends_the_publisher_with_a_reason(fmt: str, seed: int) -> None:
    hub = RoomHub()
    data = (b"FLV\x01\x05\x00\x00\x00\x09" + bytes(4) if fmt == "flv" else b"") + random.Random(
        seed).randbytes(4 << 20)
    reason = await asyncio.wait_for(
        PushIngest(hub).run(1, "r", "u", "srt", fmt, chunks(data, 65536)), 30)
    # garbage that reads as a tag of a codec nobody supports is refused as such
    assert reason.startswith(("stream error", "unpublished", "codec ")), reason
    assert not hub.publications() and not hub.is_publishing(1, "r")


async def test_a_second_publish_replaces_the_first(flv: bytes) -> None:
    hub, hold = RoomHub(), asyncio.Event()
    ingest = PushIngest(hub)
    first = asyncio.create_task(ingest.run(1, "r", "u", "rtmp", "flv", chunks(flv, hold=hold)))
    for _ in range(100):
        if hub.publications():
            break
        await asyncio.sleep(0.02)
    assert hub.publications()[0]["origin"] == "rtmp"
    second = asyncio.create_task(ingest.run(1, "r", "u", "srt", "flv", chunks(flv, hold=hold)))
    assert (await asyncio.wait_for(first, 10)).startswith("replaced")
    hold.set()
    assert await asyncio.wait_for(second, 10) == "unpublished"


async def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError):
        await PushIngest(RoomHub()).run(1, "r", "u", "rtmp", "mkv", chunks(b""))
