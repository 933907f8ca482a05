"""A real browser publishes through the /publish page (getUserMedia + WHIP) and is recorded.

Headless Chromium with its fake camera and microphone (`make test` installs Debian's chromium;
without it these tests fail, they are not skipped)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlencode

from cloudrec.tokens import make_token
from tests.e2e.test_recording import playlist_of, start, stop
from tests.helpers import APPID, SECRET, Server, make_settings, running_server
from tests.media_check import probe_playlist

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@asynccontextmanager
async def publishing_page(server: Server, tmp_path: Path, room: str) -> AsyncIterator[None]:
    """Chromium opens /publish for ``room`` (uid ``browser``); entered once it publishes."""
    assert CHROMIUM is not None, "chromium is not installed (make test installs it)"
    query = urlencode({"appid": APPID, "roomid": room, "uid": "browser", "autostart": 1,
                       "token": make_token(APPID, room, "browser", SECRET)})
    browser = subprocess.Popen(
        [str(CHROMIUM), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
         f"--user-data-dir={tmp_path / 'chromium'}", f"{server.base}/publish?{query}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not server.app.state.hub.is_publishing(APPID, room):
            assert time.monotonic() < deadline, "the page did not publish"
            assert browser.poll() is None, "chromium exited"
            await asyncio.sleep(0.2)
        yield
    finally:
        browser.terminate()
        browser.wait(10)


async def test_browser_page_publishes_and_is_recorded(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, write_rate_per_s=100, query_rate_per_s=100)
    async with running_server(settings) as server:
        async with publishing_page(server, tmp_path, "web"):
            publisher = server.app.state.hub.publishers(APPID, "web")[0]
            assert publisher.kinds == frozenset({"audio", "video"})
            print("browser sends", publisher.video_codec, publisher.audio_codec)
            resid, recordid, t0 = await start(server, "web", "browser", 0)
            await asyncio.sleep(4.0)
            t1 = await stop(server, "web", resid, recordid)
    probe = probe_playlist(playlist_of(server, "web", recordid, "browser"))
    assert probe.video_codec == "h264" and probe.width and probe.height
    assert probe.audio_codec == "aac" and probe.audio_frames > 50
    assert abs(probe.duration - (t1 - t0)) <= 1.5


async def test_browser_keeps_a_steady_bitrate(tmp_path: Path) -> None:
    """Chrome sizes its bitrate from the receiver's RTCP (receiver reports, REMB): over 20 s the
    bitrate received from its fake camera climbs and stays up, it does not collapse."""
    settings = make_settings(tmp_path, write_rate_per_s=100, query_rate_per_s=100)
    async with running_server(settings) as server:
        hub = server.app.state.hub
        async with publishing_page(server, tmp_path, "rate"):
            kbps: list[float] = []
            bytes_at = None
            for _ in range(22):
                await asyncio.sleep(1.0)
                pubs = [p for p in hub.publications() if p["roomid"] == "rate"]
                video_bytes = pubs[0].get("video", {}).get("bytes", 0) if pubs else 0
                if bytes_at is not None:
                    kbps.append((video_bytes - bytes_at) * 8 / 1000)
                bytes_at = video_bytes
    print("received video kbps per second:", [round(k) for k in kbps])
    settled = sorted(kbps[5:])
    median = settled[len(settled) // 2]
    assert median > 150, kbps
    last = kbps[-10:]
    assert sum(last) / len(last) >= 0.6 * median, kbps  # no collapse in the last 10 s
    assert min(sum(kbps[i:i + 3]) / 3 for i in range(5, len(kbps) - 2)) >= 0.3 * median, kbps
