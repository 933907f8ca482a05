"""Real ``cloudrec serve`` processes for the workers and cluster tests: each with its own
config, data directory and port, driven over HTTP like a user would."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from cloudrec.tokens import make_token
from cloudrec.webrtc.whip_client import Publisher
from tests.helpers import APPID, HEADERS, KEY, SECRET, free_port, source_body, startrecord


class Node:
    def __init__(self, data_dir: Path, port: int | None = None, **settings: Any) -> None:
        self.data_dir, self.port = data_dir, port or free_port()
        self.settings = {"data_dir": str(data_dir), "port": self.port, "idle_timeout_s": 6,
                         "segment_seconds": 1.0, "log_level": "warning",
                         "max_cpu": 64.0,  # as in helpers.make_settings; tests may lower it
                         "rtmp_port": 0, "srt_port": 0,  # push ingest off unless asked for
                         **settings}
        data_dir.mkdir(parents=True, exist_ok=True)
        self.config = data_dir / "cloudrec.toml"
        lines = [f"{k} = {_toml(v)}" for k, v in self.settings.items()]
        lines += ["[[apps]]", f"appid = {APPID}", f'key = "{KEY}"', f'secret = "{SECRET}"']
        self.config.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "Node":
        self.proc = subprocess.Popen([sys.executable, "-m", "cloudrec.cli", "serve", "--config",
                                      str(self.config)], stdout=subprocess.DEVNULL)
        return self

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def ready(self, timeout_s: float = 60.0) -> None:
        async with httpx.AsyncClient() as client:
            for _ in range(int(timeout_s / 0.1)):
                assert self.proc is not None and self.proc.poll() is None, "the node exited"
                try:
                    if (await client.get(f"{self.base}/healthz")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError("node did not start")

    async def health(self) -> dict[str, Any]:
        async with httpx.AsyncClient() as client:
            return dict((await client.get(f"{self.base}/healthz")).json())

    async def call(self, what: str, body: Any = None) -> dict[str, Any]:
        url = f"{self.base}/app/{APPID}/v1/recordoss/{what}"
        async with httpx.AsyncClient(headers=HEADERS, timeout=30) as client:
            r = await (client.get(url) if body is None else client.post(url, json=body))
        data = dict(r.json())
        data["_status"] = r.status_code
        return data

    async def publisher(self, room: str, uid: str, **kw: Any) -> Publisher:
        pub = Publisher(f"{self.base}/whip/{APPID}/{room}/{uid}",
                        make_token(APPID, room, uid, SECRET), **kw)
        await pub.start()
        await pub.wait_connected()
        return pub

    async def record(self, room: str, uid: str) -> tuple[str, str]:
        resid = (await self.call("applyrecord", {}))["resid"]
        data = await startrecord(self.call, source_body(resid, room, uid))
        assert data["code"] == 0, data
        return resid, data["recordid"]

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def worker_of(health: dict[str, Any], room: str) -> dict[str, Any] | None:
    """The worker (from /healthz) that holds ``room`` of the test app."""
    for worker in health["workers"]:
        if f"{APPID}/{room}" in worker["rooms"]:
            return dict(worker)
    return None
