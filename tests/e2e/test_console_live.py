"""The console's live abilities: watching a publisher over WHEP, the charts' samples, starting
and stopping a recording. Over HTTP: the writes' guard (credential, JSON body), the play token,
the samples, errors with their code; in a real browser (Debian's chromium through chromedriver
and selenium): "watch live" plays, the charts are drawn, a recording started from the console is
listed, stopped and playable, no request leaves the server and nothing fails."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import av

from cloudrec.tokens import verify_room_token
from tests.e2e.test_console import (
    PASSWORD,
    SECRETS,
    _browser,
    _requests,
    needs_browser,
    publish,
    wait_for,
)
from tests.helpers import APPID, SECRET, make_settings, running_server

try:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # pragma: no cover - the test extras install it
    pass

BEARER = {"Authorization": f"Bearer {PASSWORD}"}
JSON = {**BEARER, "Content-Type": "application/json"}


def _settings(tmp_path: Path) -> Any:
    return make_settings(tmp_path, operator_password=PASSWORD, segment_seconds=1.0,
                         idle_timeout_s=10.0, write_rate_per_s=100, query_rate_per_s=1000,
                         console_sample_s=0.5)


def _playable(data_dir: Path, recordid: str) -> int:
    """Video frames PyAV decodes from the recording's stored playlist."""
    playlist = next(p for p in data_dir.rglob(f"*{recordid}*.m3u8") if "spool" not in p.parts)
    frames = 0
    with av.open(str(playlist)) as container:
        for frame in container.decode(video=0):
            frames += 1
            assert frame.width == 320 and frame.height == 240
    return frames


async def test_console_writes_samples_and_play_tokens(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    async with running_server(settings) as server:
        pub = await publish(server, "live-room", "carol")
        c, base = server.client, server.base
        try:
            # the charts' samples: points after a few sampling periods
            async def sampled() -> dict[str, Any] | None:
                data = (await c.get(base + "/console/api/samples", headers=BEARER)).json()
                series = data["publishers"].get(f"{APPID}/live-room/carol")
                if series and len([v for v in series["kbps"] if v]) >= 2:
                    return data
                return None
            data = await wait_for(sampled, what="samples of the publisher")
            assert data["period_s"] == 0.5 and data["points"] == 120
            series = data["publishers"][f"{APPID}/live-room/carol"]
            assert len(series["kbps"]) == len(series["fps"]) == len(data["t"]) <= 120
            assert any(v for v in series["fps"])
            node = next(iter(data["nodes"].values()))
            assert len(node["cpu"]) == len(data["t"]) and "recordings" in node

            # writes: the credential, then a JSON body
            body = {"appid": APPID, "roomid": "live-room", "uid": "carol"}
            for path in ("/console/api/playtoken", "/console/api/recordings",
                         "/console/api/recordings/x/stop"):
                r = await c.post(base + path, json=body)
                assert r.status_code == 401, path
                r = await c.post(base + path, content="appid=1", headers={
                    **BEARER, "Content-Type": "application/x-www-form-urlencoded"})
                assert r.status_code == 415, path
                r = await c.post(base + path, content="[1]", headers=JSON)
                assert r.status_code == 400 and r.json()["code"] == 2101, path

            # a play token of the room for a console viewer, never the app's secret
            r = await c.post(base + "/console/api/playtoken", json=body, headers=BEARER)
            assert r.status_code == 200, r.text
            grant = r.json()
            assert SECRET not in r.text
            viewer, play = verify_room_token(grant["token"], APPID, "live-room", SECRET)
            assert play and viewer.startswith("console-")
            assert grant["whep"] == f"/whep/{APPID}/live-room/carol"
            r = await c.post(base + "/console/api/playtoken", headers=BEARER,
                             json={**body, "appid": 999})
            assert r.status_code == 400 and r.json()["code"] == 2101

            r = await c.post(base + "/console/api/recordings", headers=BEARER,
                             json={**body, "recordtype": 7})
            assert r.status_code == 400 and "recordtype" in r.json()["message"]
            r = await c.get(base + "/console/api/samples")
            assert r.status_code == 401

            # errors keep their seed code: nobody publishes as "nobody"
            r = await c.post(base + "/console/api/recordings", headers=BEARER,
                             json={"appid": APPID, "roomid": "empty-room", "uid": "nobody"})
            assert r.status_code == 409 and r.json()["code"] == 4005, r.text

            # start, listed, stop, playable
            r = await c.post(base + "/console/api/recordings", json=body, headers=BEARER)
            assert r.status_code == 200 and r.json()["code"] == 0, r.text
            recordid = r.json()["recordid"]

            async def recording() -> bool:
                rec = (await c.get(base + f"/console/api/recordings/{recordid}",
                                   headers=BEARER)).json()
                return rec["state"] == "recording" and rec["segments"] >= 2
            await wait_for(recording, what="the console's recording with segments")
            rec = (await c.get(base + f"/console/api/recordings/{recordid}",
                               headers=BEARER)).json()
            assert rec["type"] == "source" and rec["uid"] == "carol"
            assert rec["storage"]["vender"] == 101
            r = await c.post(base + f"/console/api/recordings/{recordid}/stop", json={},
                             headers=BEARER)
            assert r.status_code == 200 and r.json()["code"] == 0, r.text
            r = await c.post(base + f"/console/api/recordings/{recordid}/stop", json={},
                             headers=BEARER)
            assert r.json()["code"] != 0, r.text  # a stopped recording is not stopped twice
            r = await c.post(base + "/console/api/recordings/no-such/stop", json={},
                             headers=BEARER)
            assert r.status_code == 400 and r.json()["code"] == 2101
        finally:
            await pub.stop()
    assert await asyncio.to_thread(_playable, settings.data_dir, recordid) > 10


# -- in a browser ----------------------------------------------------------------------------------

def _click(driver: Any, css: str) -> bool:
    """Click the element now matching ``css`` (the page redraws its tables every refresh, so a
    found element may be replaced before a second call reaches it)."""
    return bool(driver.execute_script(
        "const e = document.querySelector(arguments[0]); if (e) e.click(); return !!e;", css))


def _drive(driver: Any, base: str) -> dict[str, Any]:
    wait = WebDriverWait(driver, 30, poll_frequency=0.2)
    driver.get(base + "/")
    wait.until(lambda d: d.current_url.startswith(base + "/login"))
    driver.find_element(By.NAME, "password").send_keys(PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "form.signin button").click()
    wait.until(lambda d: d.current_url == base + "/")
    row_css = f'[data-room="{APPID}/live-room"] tr[data-uid="dave"]'
    shown: dict[str, Any] = {}

    # watch live
    wait.until(lambda d: _click(d, row_css + ' button[data-action="watch"]'))
    width = "return document.getElementById('live').videoWidth"
    current = "return document.getElementById('live').currentTime"
    started = time.monotonic()
    wait.until(lambda d: d.execute_script(width) > 0 and d.execute_script(current) > 0.2)
    shown["first_picture_s"] = time.monotonic() - started
    shown["width"] = driver.execute_script(width)
    first = driver.execute_script(current)
    time.sleep(2.0)
    shown["advanced"] = driver.execute_script(current) - first
    delay = "return document.getElementById('live').dataset.delay"
    wait.until(lambda d: d.execute_script(delay))
    shown["delay"] = float(driver.execute_script(delay))

    # the charts: each figure's name and number of points, read in one go
    charts = (f'[data-series="publisher:{APPID}/live-room/dave"] figure[data-chart]')
    read = ("return [...document.querySelectorAll(arguments[0])]"
            ".map((f) => [f.dataset.chart, Number(f.dataset.points)])")
    wait.until(lambda d: any(n >= 2 for _, n in d.execute_script(read, charts)))
    shown["charts"] = [name for name, _ in driver.execute_script(read, charts)]
    shown["node_charts"] = driver.execute_script(
        "return document.querySelectorAll('[data-series^=\"node:\"] svg.chart polyline').length")

    # record, listed, stop
    wait.until(lambda d: _click(d, row_css + ' button[data-action="record"]'))
    recording = "return document.querySelector('tr[data-recordid][data-state=\"recording\"]')" \
        "?.dataset.recordid"
    shown["recordid"] = wait.until(lambda d: d.execute_script(recording))
    time.sleep(3.0)  # a few segments
    row = f'tr[data-recordid="{shown["recordid"]}"]'
    wait.until(lambda d: _click(d, row + ' button[data-action="stop"]'))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, row + '[data-state="stopped"]'))
    shown["notice"] = driver.execute_script("return document.getElementById('notice').textContent")
    shown["page"] = driver.page_source
    _click(driver, "#live-close")
    time.sleep(0.5)
    return shown


@needs_browser
async def test_console_watches_live_charts_and_records(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    async with running_server(settings) as server:
        pub = await publish(server, "live-room", "dave")
        driver = await asyncio.to_thread(_browser, tmp_path)
        try:
            shown = await asyncio.to_thread(_drive, driver, server.base)
            urls, errors = await asyncio.to_thread(_requests, driver)
            console_log = await asyncio.to_thread(driver.get_log, "browser")
        finally:
            await asyncio.to_thread(driver.quit)
            await pub.stop()
    assert shown["width"] == 320, shown
    assert shown["first_picture_s"] < 5.0, shown
    assert shown["advanced"] > 1.0, f"the live video did not advance: {shown}"
    assert shown["delay"] < 1.0, f"the live video plays {shown['delay']} s behind: {shown}"
    assert shown["charts"] == ["bitrate", "frame rate"], shown
    assert shown["node_charts"] >= 2, shown
    assert "stopped recording" in shown["notice"], shown
    for secret in SECRETS:
        assert secret not in shown["page"]
    assert any(u.startswith(server.base + f"/whep/{APPID}/") for u in urls), urls
    assert any(u.startswith(server.base + "/whep/session/") for u in urls), "no DELETE on close"
    outside = [u for u in urls if not u.startswith(server.base + "/")
               and not u.startswith(("data:", "blob:", "chrome:", "about:"))]
    assert outside == [], f"requests left the server: {outside}"
    assert errors == [], f"failed requests: {errors}"
    severe = [e for e in console_log if e["level"] == "SEVERE"]
    assert severe == [], f"console errors: {severe}"
    assert await asyncio.to_thread(_playable, settings.data_dir, shown["recordid"]) > 10

