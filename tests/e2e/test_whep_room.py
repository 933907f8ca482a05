"""The room page: two Chromiums (fake camera and microphone) each publish over WHIP and see
the other over WHEP, announced by the room's event stream; and the event stream itself."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from cloudrec.tokens import make_token
from tests.e2e.test_recording import publish
from tests.helpers import APPID, SECRET, make_settings, running_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
except ImportError:  # pragma: no cover - the test extras install it
    webdriver = None  # type: ignore[assignment]

needs_browser = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None or webdriver is None,
    reason="needs chromium, chromium-driver and selenium")


def _browser(profile: Path) -> Any:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-default-apps", "--autoplay-policy=no-user-gesture-required",
                "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                "--window-size=1200,900", f"--user-data-dir={profile}"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)


_PLAYING = """
const v = document.querySelector(`video[data-uid="${arguments[0]}"]`);
return v ? [v.videoWidth, v.currentTime] : null;
"""


def _sees(driver: Any, other: str, timeout: float = 30.0) -> tuple[int, float, float]:
    """Wait until ``video[data-uid=other]`` has a picture and its time advances."""
    deadline = time.monotonic() + timeout
    first: tuple[int, float] | None = None
    while time.monotonic() < deadline:
        state = driver.execute_script(_PLAYING, other)
        if state and state[0] > 0:
            if first is None:
                first = (state[0], state[1])
            elif state[1] > first[1] + 0.5:
                return state[0], first[1], state[1]
        time.sleep(0.2)
    raise AssertionError(f"no playing video of {other} ({driver.execute_script(_PLAYING, other)})")


def _gone(driver: Any, other: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while driver.execute_script(_PLAYING, other) is not None:
        assert time.monotonic() < deadline, f"the video of {other} stayed"
        time.sleep(0.2)


@needs_browser
async def test_two_browsers_on_the_room_page_see_each_other(tmp_path: Path) -> None:
    async with running_server(make_settings(tmp_path)) as server:
        drivers: dict[str, Any] = {}
        try:
            for uid in ("ann", "ben"):
                drivers[uid] = await asyncio.to_thread(_browser, tmp_path / uid)
                query = urlencode({"uid": uid, "token": make_token(APPID, "talk", uid, SECRET)})
                await asyncio.to_thread(drivers[uid].get,
                                        f"{server.base}/room/{APPID}/talk?{query}")
            ann = await asyncio.to_thread(_sees, drivers["ann"], "ben")
            ben = await asyncio.to_thread(_sees, drivers["ben"], "ann")
            print("ann sees ben", ann, "ben sees ann", ben)
            assert server.app.state.hub.is_publishing(APPID, "talk")
            assert len(server.app.state.viewers.sessions()) == 2
            # ben leaves the page (its WHIP session is deleted): his tile goes from ann's page
            await asyncio.to_thread(drivers["ben"].get, "about:blank")
            await asyncio.to_thread(_gone, drivers["ann"], "ben")
        finally:
            for driver in drivers.values():
                await asyncio.to_thread(driver.quit)


async def test_room_events_announce_publishers(tmp_path: Path) -> None:
    async with running_server(make_settings(tmp_path)) as server:
        url = f"{server.base}/rooms/{APPID}/ev/events"
        r = await server.client.get(url)
        assert r.status_code == 401
        r = await server.client.get(url, params={"token": make_token(APPID, "x", "v", SECRET)})
        assert r.status_code == 401
        token = make_token(APPID, "ev", "v", SECRET, play=True)
        seen: list[str] = []

        async def read() -> None:
            async with server.client.stream("GET", url, params={"token": token}) as response:
                assert response.headers["content-type"].startswith("text/event-stream")
                async for line in response.aiter_lines():
                    if line.startswith("event:") or line.startswith("data:"):
                        seen.append(line)

        reader = asyncio.create_task(read())
        pub = await publish(server, "ev", "alice")
        try:
            deadline = time.monotonic() + 5
            while "event: published" not in seen:
                assert time.monotonic() < deadline, seen
                await asyncio.sleep(0.1)
            assert seen[seen.index("event: published") + 1] == 'data: {"uid": "alice"}'
        finally:
            await pub.stop()
        deadline = time.monotonic() + 5
        while "event: unpublished" not in seen:
            assert time.monotonic() < deadline, seen
            await asyncio.sleep(0.1)
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
