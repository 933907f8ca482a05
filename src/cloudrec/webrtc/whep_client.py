"""A WHEP viewer that decodes what it receives (aiortc), for tests and benchmarks::

    viewer = Viewer("http://127.0.0.1:8080/whep/10034/room1/alice", token)
    await viewer.start()
    await viewer.wait_pictures(1)
    print(viewer.pictures[-1])  # (arrival, pts, width, height)
    await viewer.stop()

``on_picture`` gets every decoded ``av.VideoFrame`` with its arrival time (the benchmark reads
colours from it).
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import httpx
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame

__all__ = ["PlayError", "Viewer"]


class PlayError(RuntimeError):
    """The WHEP endpoint refused (``status``, ``body``)."""

    def __init__(self, message: str, status: int | None = None, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class Viewer:
    def __init__(self, whep_url: str, token: str, *, audio: bool = True, video: bool = True,
                 timeout_s: float = 10.0,
                 on_picture: Callable[[Any, float], None] | None = None) -> None:
        self.whep_url, self._token, self._timeout = whep_url, token, timeout_s
        self.kinds = [k for k, on in (("video", video), ("audio", audio)) if on]
        self.on_picture = on_picture
        self.pc = RTCPeerConnection()
        self.session_url: str | None = None
        self.posted_at = 0.0
        self.pictures: list[tuple[float, int, int, int]] = []  # (arrival, pts, width, height)
        self.audio_frames = 0
        self._readers: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """POST the offer; PlayError unless the answer is a 201."""
        for kind in self.kinds:
            self.pc.addTransceiver(kind, direction="recvonly")

        @self.pc.on("track")
        def _on_track(track: MediaStreamTrack) -> None:
            self._readers.append(asyncio.ensure_future(self._read(track)))

        await self.pc.setLocalDescription(await self.pc.createOffer())
        headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {self._token}"}
        self.posted_at = time.monotonic()
        async with httpx.AsyncClient(timeout=self._timeout) as http:
            response = await http.post(self.whep_url, content=self.pc.localDescription.sdp,
                                       headers=headers)
        if response.status_code != 201:
            await self.pc.close()
            raise PlayError(f"WHEP POST answered {response.status_code}: {response.text}",
                            response.status_code, response.text)
        self.session_url = urllib.parse.urljoin(str(response.url),
                                                response.headers["location"])
        await self.pc.setRemoteDescription(RTCSessionDescription(response.text, "answer"))

    async def _read(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                now = time.monotonic()
                if track.kind == "audio":
                    self.audio_frames += 1
                    continue
                assert isinstance(frame, VideoFrame)
                self.pictures.append((now, int(frame.pts or 0), frame.width, frame.height))
                if self.on_picture is not None:
                    self.on_picture(frame, now)
        except (MediaStreamError, asyncio.CancelledError):
            pass

    async def wait_pictures(self, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.pictures) < count:
            if time.monotonic() > deadline:
                raise PlayError(f"{len(self.pictures)} pictures of {count} in {timeout} s")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        if self.session_url:
            try:
                async with httpx.AsyncClient(timeout=self._timeout) as http:
                    await http.delete(self.session_url)
            except httpx.HTTPError:
                pass
        for reader in self._readers:
            reader.cancel()
        await self.pc.close()
