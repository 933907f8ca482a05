"""``cloudrec demo``: one synthetic user recorded end to end through the real API and WHIP."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import uvicorn

from cloudrec.api import create_app
from cloudrec.api.auth import basic_token
from cloudrec.config import Settings
from cloudrec.tokens import make_token
from cloudrec.webrtc.whip_client import Publisher

ROOM, UID = "demoroom", "demouser"


async def run_demo(settings: Settings, seconds: float) -> Path:
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host=settings.host,
                                           port=settings.port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    app_cfg = settings.apps[0]
    appid = app_cfg.appid
    headers = {"AppID": str(appid), "Token": basic_token(app_cfg.key, app_cfg.secret)}
    base = f"{settings.base_url}/app/{appid}/v1/recordoss"
    publisher = Publisher(f"{settings.base_url}/whip/{appid}/{ROOM}/{UID}",
                          make_token(appid, ROOM, UID, app_cfg.secret), width=640, height=480)
    try:
        await publisher.start()
        async with httpx.AsyncClient(headers=headers, timeout=30) as client:
            resid = (await client.post(f"{base}/applyrecord", json={})).json()["resid"]
            for _ in range(50):  # the WHIP session needs a moment to connect
                started = (await client.post(f"{base}/startrecord", json={
                    "resid": resid, "appid": appid, "roomid": ROOM, "recordtype": 0,
                    "streamtype": 2, "uid": UID,
                    "storagecfg": {"vender": 101, "endpoint": "local", "bucket": "demo",
                                   "accesskey": "-", "secretkey": "-", "fileprefix": ["demo"]},
                })).json()
                if started["code"] != 4005:
                    break
                await asyncio.sleep(0.2)
            if started["code"] != 0:
                raise RuntimeError(f"startrecord failed: {started}")
            recordid = started["recordid"]
            await asyncio.sleep(seconds)
            stopped = (await client.post(f"{base}/stoprecord", json={
                "resid": resid, "appid": appid, "roomid": ROOM, "recordid": recordid})).json()
            if stopped["code"] != 0:
                raise RuntimeError(f"stoprecord failed: {stopped}")
    finally:
        await publisher.stop()
        server.should_exit = True
        await serving
    name = f"{appid}_{ROOM}_{recordid}_{UID}.m3u8"
    return (settings.data_dir / "storage" / "demo" / "demo" / name).resolve()
