"""Fixtures of the end-to-end tests: a WHIP server over a real RoomHub and WebRTC ingest."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import uvicorn
from fastapi import FastAPI

from cloudrec.api.whip import whip_router
from cloudrec.rooms import RoomHub
from cloudrec.tokens import make_token
from cloudrec.webrtc.ingest import WebRtcIngest


@dataclass
class WhipServer:
    """A FastAPI app with the WHIP routes into a WebRTC ingest over a RoomHub, served by
    uvicorn on a free loopback port."""

    base_url: str
    hub: RoomHub
    webrtc: WebRtcIngest
    appid: int
    secret: str

    def url(self, roomid: str, uid: str) -> str:
        return f"{self.base_url}/whip/{self.appid}/{roomid}/{uid}"

    def token(self, roomid: str, uid: str, ttl_s: float = 3600) -> str:
        return make_token(self.appid, roomid, uid, self.secret, ttl_s=ttl_s)


@pytest.fixture
async def whip_server(request: pytest.FixtureRequest) -> AsyncIterator[WhipServer]:
    """WHIP routes over a RoomHub; an indirect parameter gives the WebRTC ingest's keyword
    arguments."""
    appid, secret = 10034, "test-secret"
    hub = RoomHub()
    webrtc = WebRtcIngest(hub, **getattr(request, "param", {}))
    app = FastAPI()
    app.include_router(whip_router(webrtc, {appid: secret}.get))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield WhipServer(f"http://127.0.0.1:{port}", hub, webrtc, appid, secret)
    finally:
        await webrtc.close()
        await hub.close()
        server.should_exit = True
        await task
        sock.close()
