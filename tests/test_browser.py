"""A real browser publishes through the /publish page (getUserMedia + WHIP) and is recorded.

Headless Chromium with its fake camera and microphone; skipped where Chromium is not installed
(`apt-get install chromium`)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import urlencode

import pytest

from cloudrec.rooms import make_token
from tests.helpers import APPID, SECRET, make_settings, running_server
from tests.media_check import probe_playlist
from tests.test_recording import playlist_of, start, stop

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
async def test_browser_page_publishes_and_is_recorded(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, write_rate_per_s=100, query_rate_per_s=100)
    async with running_server(settings) as server:
        query = urlencode({"appid": APPID, "roomid": "web", "uid": "browser", "autostart": 1,
                           "token": make_token(APPID, "web", "browser", SECRET)})
        browser = subprocess.Popen(
            [str(CHROMIUM), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
             f"--user-data-dir={tmp_path / 'chromium'}", f"{server.base}/publish?{query}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while not server.app.state.hub.is_publishing(APPID, "web"):
                assert time.monotonic() < deadline, "the page did not publish"
                assert browser.poll() is None, "chromium exited"
                await asyncio.sleep(0.2)
            publisher = server.app.state.hub.publishers(APPID, "web")[0]
            assert publisher.kinds == frozenset({"audio", "video"})
            print("browser sends", publisher.video_codec, publisher.audio_codec)
            resid, recordid, t0 = await start(server, "web", "browser", 0)
            await asyncio.sleep(4.0)
            t1 = await stop(server, "web", resid, recordid)
        finally:
            browser.terminate()
            browser.wait(10)
    probe = probe_playlist(playlist_of(server, "web", recordid, "browser"))
    assert probe.video_codec == "h264" and probe.width and probe.height
    assert probe.audio_codec == "aac" and probe.audio_frames > 50
    assert abs(probe.duration - (t1 - t0)) <= 1.5
