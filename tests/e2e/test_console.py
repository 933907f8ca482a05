"""The operator console: a real browser (Debian's chromium through chromedriver and selenium)
signs in, sees a live publisher and a running recording, and plays the recording live; every
request it makes goes to the server and nothing fails. Sign-in, path safety and redaction are
checked over HTTP against a real server with a real recording in local storage.

The browser tests are skipped where chromium, chromedriver or selenium are missing
(`make test` installs them)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloudrec.console.auth import COOKIE, OperatorAuth
from cloudrec.tokens import make_token
from cloudrec.webrtc.whip_client import Publisher
from tests.e2e.test_callbacks import Receiver, serving
from tests.helpers import (
    APPID,
    KEY,
    SECRET,
    Server,
    free_port,
    make_settings,
    running_server,
    source_body,
    startrecord,
)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
try:
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # pragma: no cover - the test extras install it
    webdriver = None  # type: ignore[assignment]

needs_browser = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None or webdriver is None,
    reason="needs chromium, chromium-driver and selenium")

PASSWORD = "console-operator-pass"
ACCESSKEY = "AKIA-CONSOLE-ACCESS-7Q"
SECRETKEY = "console-storage-SECRETKEY-93x"
CALLBACK_TOKEN = "cb-token-Zk81"
STORAGE = {"vender": 101, "endpoint": "local", "bucket": "rec-bucket", "accesskey": ACCESSKEY,
           "secretkey": SECRETKEY, "fileprefix": ["console"]}
SECRETS = [SECRET, "other-secret", SECRETKEY, ACCESSKEY, CALLBACK_TOKEN, PASSWORD,
           base64.b64encode(f"{KEY}:{SECRET}".encode()).decode()]


async def publish(server: Server, room: str, uid: str) -> Publisher:
    pub = Publisher(server.whip_url(room, uid), make_token(APPID, room, uid, SECRET))
    await pub.start()
    await pub.wait_connected()
    return pub


async def record(server: Server, room: str, uid: str,
                 callbackurl: str | None = None) -> tuple[str, str]:
    resid = await server.apply()
    body = source_body(resid, room, uid, storagecfg=dict(STORAGE))
    if callbackurl:
        body["callbackurl"] = callbackurl
    data = await startrecord(server.call, body)
    assert data["code"] == 0, data
    return resid, str(data["recordid"])


async def wait_for(check: Any, timeout: float = 40.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


# -- the browser -----------------------------------------------------------------------------------

def _browser(tmp_path: Path) -> Any:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-default-apps", "--autoplay-policy=no-user-gesture-required",
                "--window-size=1500,1000", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)


def _drive_console(driver: Any, base: str, recordid: str,
                   screenshot: Path | None) -> dict[str, Any]:
    """Sign in, find the publisher and the recording, play it; what the page showed."""
    wait = WebDriverWait(driver, 60, poll_frequency=0.2)  # a loaded box renders slowly
    driver.get(base + "/")
    wait.until(lambda d: d.current_url.startswith(base + "/login"))
    driver.find_element(By.NAME, "password").send_keys(PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "form.signin button").click()
    wait.until(lambda d: d.current_url == base + "/")
    pub_css = f'[data-room="{APPID}/console-room"] tr[data-uid="alice"]'
    row_css = f'tr[data-recordid="{recordid}"][data-state="recording"]'

    def rows_shown(d: Any) -> dict[str, str] | None:
        """Both rows read in one go: the page rebuilds its tables as they refresh."""
        try:
            pubs, rows = (d.find_elements(By.CSS_SELECTOR, pub_css),
                          d.find_elements(By.CSS_SELECTOR, row_css))
            if pubs and rows:
                rows[0].find_element(By.CSS_SELECTOR, "button.play").click()
                return {"publisher": pubs[0].text, "recording": rows[0].text}
        except StaleElementReferenceException:
            pass
        return None

    shown = wait.until(rows_shown)
    current = "return document.getElementById('player').currentTime"
    wait.until(lambda d: d.execute_script(current) > 1.0)
    first = driver.execute_script(current)
    time.sleep(3.0)
    shown["advanced"] = driver.execute_script(current) - first
    if screenshot is not None:  # with the publisher playing live beside the recording
        driver.execute_script(  # one call: the page redraws its rooms every refresh
            "document.querySelector(arguments[0]).click()", f'[data-room="{APPID}/console-room"]'
            ' tr[data-uid="alice"] button[data-action="watch"]')
        wait.until(lambda d: d.execute_script("return document.getElementById('live').videoWidth"))
        driver.set_window_size(1500, 1250)
        driver.execute_script("window.scrollTo(0, 0)")
        time.sleep(2.5)  # one more refresh, with the player running
        driver.save_screenshot(str(screenshot))
    driver.get(base + "/docs")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock"))
    shown["docs"] = len(driver.find_elements(By.CSS_SELECTOR, ".opblock"))
    time.sleep(0.5)
    return shown


def _requests(driver: Any) -> tuple[list[str], list[tuple[str, int]]]:
    """Every URL the browser requested, and the responses that were errors."""
    urls, errors = [], []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
        elif message["method"] == "Network.responseReceived":
            response = message["params"]["response"]
            if response["status"] >= 400:
                errors.append((response["url"], response["status"]))
    return urls, errors


@needs_browser
async def test_console_in_a_browser(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, operator_password=PASSWORD, segment_seconds=2.0,
                             idle_timeout_s=10.0, write_rate_per_s=100, query_rate_per_s=1000,
                             console_sample_s=1.0)
    rx = Receiver(failures=0)
    async with serving(rx) as hook, running_server(settings) as server:
        pub = await publish(server, "console-room", "alice")
        driver = await asyncio.to_thread(_browser, tmp_path)
        try:
            resid, recordid = await record(server, "console-room", "alice", hook)
            # CONSOLE_SCREENSHOT=docs/console.png takes the README's picture on the way
            shot = os.environ.get("CONSOLE_SCREENSHOT")
            shown = await asyncio.to_thread(_drive_console, driver, server.base, recordid,
                                            Path(shot) if shot else None)
            urls, errors = await asyncio.to_thread(_requests, driver)
            console_log = await asyncio.to_thread(driver.get_log, "browser")
        finally:
            await asyncio.to_thread(driver.quit)
            await pub.stop()
    assert "alice" in shown["publisher"] and "h264" in shown["publisher"], shown
    assert "320×240" in shown["publisher"], shown
    assert "recording" in shown["recording"] and "source" in shown["recording"], shown
    assert shown["advanced"] > 1.5, f"the player did not advance: {shown}"
    assert shown["docs"] >= 5, shown
    assert urls, "no request was logged"
    # chrome:// URLs are the browser's own start page, read from its resources, not the network
    outside = [u for u in urls if not u.startswith(server.base + "/")
               and not u.startswith(("data:", "blob:", "chrome:", "about:"))]
    assert outside == [], f"requests left the server: {outside}"
    assert errors == [], f"failed requests: {errors}"
    severe = [e for e in console_log if e["level"] == "SEVERE"]
    assert severe == [], f"console errors: {severe}"
    assert any("/console/files/" in u and u.endswith(".ts") for u in urls), "no segment played"


# -- sign-in ---------------------------------------------------------------------------------------

async def test_sign_in_refuses_without_the_credential_and_never_shows_a_secret(
        tmp_path: Path) -> None:
    settings = make_settings(tmp_path, operator_password=PASSWORD, segment_seconds=2.0,
                             write_rate_per_s=100, query_rate_per_s=1000)
    rx = Receiver(failures=10**6)  # every delivery fails: events stay pending with an error
    async with serving(rx) as hook, running_server(settings) as server:
        pub = await publish(server, "signin-room", "bob")
        try:
            resid, recordid = await record(server, "signin-room", "bob",
                                           f"{hook}?token={CALLBACK_TOKEN}")
            playlist = f"/console/files/{recordid}/{APPID}_signin-room_{recordid}_bob.m3u8"
            json_paths = ["/console/api/overview", "/console/api/rooms", "/console/api/nodes",
                          "/console/api/recordings", "/console/api/recordings?state=active",
                          f"/console/api/recordings/{recordid}", "/openapi.json", "/metrics"]
            c = server.client
            bearer = {"Authorization": f"Bearer {PASSWORD}"}

            async def playlist_ready() -> bool:
                r = await c.get(server.base + playlist, headers=bearer)
                return r.status_code == 200 and ".ts" in r.text
            await wait_for(playlist_ready, what="a live playlist with a segment")
            segment = next(line for line in (await c.get(server.base + playlist, headers=bearer)
                                             ).text.splitlines() if line.endswith(".ts"))
            files = [playlist, f"/console/files/{recordid}/{segment}"]

            # refused: nothing, a wrong password, another user, a forged cookie
            forged = OperatorAuth(replace(settings, operator_password="another")).new_session()
            for headers, cookies in [({}, {}), ({"Authorization": "Bearer wrong"}, {}),
                                     ({"Authorization": "Basic " + base64.b64encode(
                                         f"admin:{PASSWORD}".encode()).decode()}, {}),
                                     ({}, {COOKIE: forged}), ({}, {COOKIE: "v1.9999999999.x.y"})]:
                c.cookies.clear()
                for path in json_paths + files:
                    r = await c.get(server.base + path, headers=headers, cookies=cookies)
                    assert r.status_code == 401, (path, headers, r.status_code)
                    assert r.headers["www-authenticate"].startswith("Bearer")
                for page in ("/", "/docs"):
                    r = await c.get(server.base + page, headers=headers, cookies=cookies)
                    assert r.status_code == 303 and r.headers["location"].startswith("/login")

            # a wrong password at the form: no cookie
            r = await c.post(server.base + "/login", data={"password": "nope", "next": "/"})
            assert r.status_code == 303 and "failed=1" in r.headers["location"]
            assert COOKIE not in r.cookies

            # allowed: Bearer, Basic operator:password, and the form's session cookie
            basic = {"Authorization": "Basic " + base64.b64encode(
                f"operator:{PASSWORD}".encode()).decode()}
            r = await c.post(server.base + "/login",
                             data={"password": PASSWORD, "next": "//evil.example/"})
            assert r.status_code == 303 and r.headers["location"] == "/"
            set_cookie = r.headers["set-cookie"].lower()
            assert "httponly" in set_cookie and "samesite=strict" in set_cookie
            session = {COOKIE: r.cookies[COOKIE]}
            c.cookies.clear()
            bodies: list[str] = []
            for headers, cookies in [(bearer, {}), (basic, {}), ({}, session)]:
                for path in json_paths + ["/", "/docs"]:
                    r = await c.get(server.base + path, headers=headers, cookies=cookies)
                    assert r.status_code == 200, (path, r.status_code, r.text[:200])
                    bodies.append(r.text)
                for path in files:
                    r = await c.get(server.base + path, headers=headers, cookies=cookies)
                    assert r.status_code == 200 and r.content, path
                c.cookies.clear()
            assert r.headers["content-type"] == "video/mp2t"

            # the recording, its publisher and its pending events are all there
            async def listed() -> dict[str, Any] | None:
                data = (await c.get(server.base + "/console/api/recordings", headers=bearer)).json()
                rec = next(x for x in data["recordings"] if x["recordid"] == recordid)
                return rec if rec["events"] and rec["events"][0]["last_error"] else None
            rec = await wait_for(listed, what="a pending callback event with its error")
            assert rec["state"] in ("starting", "recording") and rec["type"] == "source"
            assert rec["events"][0]["type"] == "recording.started"
            assert rec["events"][0]["state"] == "pending"
            assert rec["events"][0]["last_error"] == "HTTP 500"
            assert rec["player"] == playlist and rec["storage"]["bucket"] == "rec-bucket"
            rooms = (await c.get(server.base + "/console/api/rooms", headers=bearer)).json()
            room = next(r for r in rooms["rooms"] if r["roomid"] == "signin-room")
            assert [p["uid"] for p in room["publishers"]] == ["bob"]
            detail = (await c.get(server.base + f"/console/api/recordings/{recordid}",
                                  headers=bearer)).json()
            assert detail["request"]["storagecfg"]["secretkey"] == "***"
            assert detail["callbackurl"].endswith("?token=%2A%2A%2A")
            bodies.append(json.dumps(detail))

            # path safety: only the recording's own files, never outside their directories
            for bad in [f"/console/files/{recordid}/..%2F..%2F..%2Fdev-app.json",
                        f"/console/files/{recordid}/%2E%2E",
                        f"/console/files/{recordid}/{APPID}_signin-room_{recordid}_bob.m3u8%00",
                        f"/console/files/{recordid}/other_{recordid}.ts",
                        f"/console/files/{recordid}/..%2Fspool%2F{recordid}%2F{segment}",
                        f"/console/files/no-such-record/{APPID}_x.m3u8",
                        f"/console/files/{recordid}/{APPID}_signin-room_{recordid}_bob.json"]:
                r = await c.get(server.base + bad, headers=bearer)
                assert r.status_code == 404, (bad, r.status_code)
        finally:
            await pub.stop()
        await server.call("stoprecord", {"resid": resid, "appid": APPID,
                                         "roomid": "signin-room", "recordid": recordid})
        ended = await c.get(server.base + playlist, headers=bearer)
        assert ended.status_code == 200 and ended.text.rstrip().endswith("#EXT-X-ENDLIST")
        for state in ("ended", "stopped", "all"):
            r = await c.get(server.base + f"/console/api/recordings?state={state}&appid={APPID}"
                            "&roomid=signin-room", headers=bearer)
            rec = next(x for x in r.json()["recordings"] if x["recordid"] == recordid)
            assert rec["state"] == "stopped" and rec["stopreason"] == "api"
            assert rec["segments"] >= 1 and rec["pendingfiles"] == 0
            bodies.append(r.text)
        r = await c.get(server.base + "/console/api/recordings?state=failed", headers=bearer)
        assert r.json()["recordings"] == []
    for body in bodies:
        for secret in SECRETS:
            assert secret not in body, f"{secret!r} reached the browser"


async def test_closed_beyond_loopback_without_a_password(tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    settings = make_settings(tmp_path, host="0.0.0.0", port=port,
                             public_url=f"http://127.0.0.1:{port}")
    with caplog.at_level(logging.WARNING, logger="cloudrec.console"):
        async with running_server(settings) as server:
            for path in ("/", "/docs", "/console/api/overview", "/openapi.json",
                         "/console/files/x/10034_x.m3u8"):
                empty = base64.b64encode(b"operator:").decode()
                for headers in ({}, {"Authorization": f"Basic {empty}"},
                                {"Authorization": "Bearer x"}):
                    r = await server.client.get(server.base + path, headers=headers)
                    assert r.status_code == 401, (path, r.status_code)
            r = await server.client.post(server.base + "/login", data={"password": ""})
            assert r.status_code == 303 and COOKIE not in r.cookies
            assert (await server.client.get(server.base + "/healthz")).status_code == 200
    closed = [r for r in caplog.records if "CLOSED" in r.getMessage()]
    assert closed and closed[0].levelno == logging.ERROR
    assert "operator_password" in closed[0].getMessage()


async def test_open_on_loopback_without_a_password_says_so(tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="cloudrec.console"):
        async with running_server(make_settings(tmp_path)) as server:
            for path in ("/", "/docs", "/console/api/overview", "/openapi.json",
                         "/console/static/vendor/hls.js-1.7.4/hls.min.js"):
                r = await server.client.get(server.base + path)
                assert r.status_code == 200, path
            overview = (await server.client.get(server.base + "/console/api/overview")).json()
            assert overview["auth"] == "open"
            docs = (await server.client.get(server.base + "/docs")).text
            assert "/console/static/vendor/swagger-ui-dist-5.35.0/swagger-ui-bundle.js" in docs
            assert "https://" not in docs and "http://" not in docs
            assert (await server.client.get(server.base + "/redoc")).status_code == 404
    warned = [r for r in caplog.records if "OPEN" in r.getMessage()]
    assert warned and warned[0].levelno == logging.WARNING


def test_sessions_expire_and_depend_on_the_password(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, operator_password=PASSWORD)
    auth = OperatorAuth(settings)
    cookie = auth.new_session(now=1000.0)
    assert auth.session_ok(cookie, now=1001.0)
    assert not auth.session_ok(cookie, now=1000.0 + 13 * 3600)
    assert OperatorAuth(settings).session_ok(cookie, now=1001.0)  # the secret persists
    changed = OperatorAuth(replace(settings, operator_password="new"))
    assert not changed.session_ok(cookie, now=1001.0)
    payload, _, mac = cookie.rpartition(".")
    longer = payload.replace(payload.split(".")[1], "99999999999")
    assert not auth.session_ok(f"{longer}.{mac}", now=1001.0)


def test_redaction_hides_nested_secrets() -> None:
    from cloudrec.console.redact import redact
    data = {"request": {"storagecfg": {"secretkey": "s", "accesskey": "a", "bucket": "b"},
                        "callbackurl": "https://u:p@hooks.example/cb?token=t&x=1"},
            "list": [{"Secret": "x", "X-Cloudrec-Signature": "sig", "uid": "u"}]}
    out = redact(data)
    assert out["request"]["storagecfg"] == {"secretkey": "***", "accesskey": "***", "bucket": "b"}
    assert out["request"]["callbackurl"] == "https://hooks.example/cb?token=%2A%2A%2A&x=%2A%2A%2A"
    assert out["list"] == [{"Secret": "***", "X-Cloudrec-Signature": "***", "uid": "u"}]
    assert httpx.URL(out["request"]["callbackurl"]).host == "hooks.example"
