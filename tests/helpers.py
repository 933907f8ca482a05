"""Shared test helpers: a real cloudrec server on a loopback port, API calls, publishers."""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import socket
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

import httpx
import uvicorn

from cloudrec.api import create_app
from cloudrec.config import AppConfig, Settings

APPID = 10034
KEY, SECRET = "demo-key", "demo-secret"
TOKEN = base64.b64encode(f"{KEY}:{SECRET}".encode()).decode()
HEADERS = {"AppID": str(APPID), "Token": TOKEN}
LOCAL_STORAGE = {
    "vender": 101,
    "endpoint": "local",
    "bucket": "rec-bucket",
    "accesskey": "ak",
    "secretkey": "sk",
    "fileprefix": ["test1", "test2"],
}

# A mixed-recording startrecord body in the recordoss API's own form.
SEED_START_MIXED = json.loads(
    """{"resid": "RESID", "appid": 10034, "roomid": "abcabc", "recordtype": 0, "streamtype": 1,
    "mixconfig":{"input":[{"uid":"10266666","roomid":"abcabc","streamtype":0,"zOrder":0,"layoutX":0,
    "layoutY":0,"layoutH":600,"layoutW":400,"crop":0},{"uid":"10277777","roomid":"efdefd",
    "streamtype":0,"zOrder":1,"layoutX":400,"layoutY":0,"layoutH":600,"layoutW":400,"crop":0}],
    "output":{"streamtype":0,"videoheight":600,"videowidth":800,"videobitrate":600,"videofps":24,
    "videogop":72,"videoencode":100,"audiobitrate":128,"audiosample":48000,"audiochannel":2,
    "audioformat":2}},"storagecfg": {"vender": 0,"endpoint": "xxxx-test-endpoint",
    "bucket": "xxxx-test-bucket","accesskey": "xxxx-test-accesskey",
    "secretkey": "xxxx-test-secretkey","fileprefix": ["test1","test2"]}}"""
)

T = TypeVar("T")


def wait_for_sync(condition: Callable[[], T], timeout: float = 30.0, interval: float = 0.05,
                  what: str = "") -> T:
    """Call ``condition`` every ``interval`` seconds until it returns a true value, and return
    that value; fail the test after ``timeout`` seconds, with ``what`` and the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not true within {timeout} s: {what or condition} "
                                 f"(last value {value!r})")
        time.sleep(interval)


async def wait_for(condition: Callable[[], T | Awaitable[T]], timeout: float = 30.0,
                   interval: float = 0.05, what: str = "") -> T:
    """``wait_for_sync`` in a coroutine: ``condition`` may be a function or a coroutine
    function; the event loop runs between checks."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise AssertionError(f"not true within {timeout} s: {what or condition} "
                                 f"(last value {value!r})")
        await asyncio.sleep(interval)


def segments_in(playlist: Path) -> list[str]:
    """The segment names a playlist lists so far; none while it does not exist."""
    try:
        return [line for line in playlist.read_text().splitlines() if line.endswith(".ts")]
    except FileNotFoundError:
        return []


def seconds_in(playlist: Path) -> float:
    """The media seconds a playlist lists so far (the sum of its ``#EXTINF``); 0 while it
    does not exist."""
    try:
        lines = playlist.read_text().splitlines()
    except FileNotFoundError:
        return 0.0
    return sum(float(line.split(":", 1)[1].split(",")[0]) for line in lines
               if line.startswith("#EXTINF:"))


async def query_until(call: Callable[[str], Awaitable[dict[str, Any]]], room: str,
                      recordid: str, condition: Callable[[dict[str, Any]], Any],
                      timeout: float = 30.0, what: str = "") -> dict[str, Any]:
    """Ask ``queryrecord`` every 0.1 s until ``condition`` holds for its answer; the answer."""
    last: dict[str, Any] = {}

    async def holds() -> dict[str, Any] | None:
        nonlocal last
        last = await call(f"queryrecord/{room}/{recordid}")
        return last if condition(last) else None

    try:
        return await wait_for(holds, timeout=timeout, interval=0.1, what=what)
    except AssertionError as e:
        raise AssertionError(f"{e}; last answer {last}") from None


def file_kinds(answer: dict[str, Any]) -> list[str]:
    """The kinds of the files a ``queryrecord`` answer lists, in order."""
    return [f["kind"] for f in (answer.get("data") or {}).get("files") or []]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    base = Settings(
        host="127.0.0.1",
        port=free_port(),
        data_dir=data_dir,
        idle_timeout_s=5.0,
        workers=1,
        # Admission from measured CPU has its own tests (test_directory, test_cluster); here it
        # would refuse work whenever a shared CI box is busy.
        max_cpu=64.0,
        rtmp_port=0,  # push ingest off unless a test turns it on (1935/8890 may be taken)
        srt_port=0,
        apps=(AppConfig(APPID, KEY, SECRET), AppConfig(10035, "other-key", "other-secret")),
    )
    return replace(base, **overrides)


@dataclass
class Server:
    settings: Settings
    client: httpx.AsyncClient
    app: Any

    @property
    def base(self) -> str:
        return self.settings.base_url

    def api(self, what: str) -> str:
        return f"{self.base}/app/{APPID}/v1/recordoss/{what}"

    async def call(self, what: str, body: Any = None, **kw: Any) -> dict[str, Any]:
        headers = kw.pop("headers", HEADERS)
        if body is None:
            r = await self.client.get(self.api(what), headers=headers, **kw)
        else:
            r = await self.client.post(self.api(what), json=body, headers=headers, **kw)
        data = r.json()
        data["_status"] = r.status_code
        return data

    async def apply(self) -> str:
        data = await self.call("applyrecord", {})
        assert data["code"] == 0, data
        return str(data["resid"])

    def whip_url(self, roomid: str, uid: str, appid: int = APPID) -> str:
        return f"{self.base}/whip/{appid}/{roomid}/{uid}"

    def storage_root(self, bucket: str = "rec-bucket") -> Path:
        return self.settings.data_dir / "storage" / bucket


@asynccontextmanager
async def running_server(settings: Settings) -> AsyncIterator[Server]:
    app = create_app(settings)
    server = uvicorn.Server(
        uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning",
                       lifespan="on")
    )
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            serving.result()
        await asyncio.sleep(0.02)
    async with httpx.AsyncClient(timeout=30) as client:
        try:
            yield Server(settings, client, app)
        finally:
            server.should_exit = True
            await serving


def source_body(resid: str, roomid: str, uid: str, recordtype: int = 0,
                **extra: Any) -> dict[str, Any]:
    return {
        "resid": resid,
        "appid": APPID,
        "roomid": roomid,
        "recordtype": recordtype,
        "streamtype": 2,
        "uid": uid,
        "storagecfg": dict(LOCAL_STORAGE),
        **extra,
    }


async def startrecord(
    call: Callable[[str, Any], Awaitable[dict[str, Any]]], body: dict[str, Any]
) -> dict[str, Any]:
    """POST startrecord, again while it answers 4005: a publication is announced once its
    first frames arrive, a moment after the publisher connected. Returns the last answer."""
    for _ in range(50):
        data = await call("startrecord", body)
        if data["code"] != 4005:
            break
        await asyncio.sleep(0.1)
    return data
