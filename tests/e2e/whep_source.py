"""A small WHEP server on aiortc for the ingress tests: each POSTed offer gets a session that
sends the synthetic test pattern (H.264) and tone (Opus)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from aiortc import RTCPeerConnection, RTCSessionDescription
from fastapi import FastAPI, Request, Response

from cloudrec.webrtc.synthetic import Pacer, TestPatternTrack, ToneTrack


@asynccontextmanager
async def whep_server() -> AsyncIterator[str]:
    """Serve WHEP at ``/cam/whep`` on loopback; the ``whep://`` URL."""
    app = FastAPI()
    sessions: dict[str, RTCPeerConnection] = {}

    @app.post("/cam/whep")
    async def offer(request: Request) -> Response:
        pc = RTCPeerConnection()
        pacer = Pacer()
        await pc.setRemoteDescription(RTCSessionDescription(
            sdp=(await request.body()).decode(), type="offer"))
        for t in pc.getTransceivers():
            track = TestPatternTrack(320, 240, 15, pacer) if t.kind == "video" else ToneTrack(
                440.0, pacer)
            t.sender.replaceTrack(track)
            t.direction = "sendonly"
        await pc.setLocalDescription(await pc.createAnswer())
        sid = str(len(sessions) + 1)
        sessions[sid] = pc
        return Response(pc.localDescription.sdp, status_code=201,
                        media_type="application/sdp",
                        headers={"Location": f"/cam/whep/{sid}"})

    @app.delete("/cam/whep/{sid}")
    async def delete(sid: str) -> Response:
        pc = sessions.pop(sid, None)
        if pc is not None:
            await pc.close()
        return Response(status_code=200)

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield f"whep://127.0.0.1:{sock.getsockname()[1]}/cam/whep"
    finally:
        for pc in sessions.values():
            await pc.close()
        server.should_exit = True
        await task
        sock.close()
