"""A WHIP publisher of synthetic media (:mod:`cloudrec.webrtc.synthetic`).

Used by ``cloudrec publish``, ``cloudrec demo``, tests and benchmarks::

    stats = await publish("http://127.0.0.1:8080/whip/10034/room1/alice", token, duration=10)

Video is encoded by aiortc (H.264 or VP8, forced through codec preferences); audio is Opus.
With ``clip=`` a pre-encoded file is sent as-is (:func:`~cloudrec.webrtc.synthetic.make_clip`).
The HTTP side of WHIP uses httpx.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)

from cloudrec.webrtc.synthetic import ClipTrack, Pacer, TestPatternTrack, ToneTrack, load_clip

__all__ = ["PublishError", "PublishStats", "Publisher", "publish"]


class PublishError(RuntimeError):
    """The WHIP endpoint refused the publish (``status``, ``body``) or the session failed."""

    def __init__(self, message: str, status: int | None = None, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


@dataclass
class PublishStats:
    session_url: str | None
    video_codec: str | None
    video_frames: int
    audio_frames: int
    seconds: float
    connection_state: str


def _preferences(kind: str, codec: str) -> list[Any]:
    caps = RTCRtpSender.getCapabilities(kind).codecs
    mime = f"{kind}/{codec}".lower()
    chosen = [c for c in caps if c.mimeType.lower() == mime]
    if not chosen:
        raise ValueError(f"aiortc cannot send {codec}")
    return chosen + [c for c in caps if c.mimeType.lower() == f"{kind}/rtx"]


class Publisher:
    """One WHIP publication: :meth:`start` POSTs the offer, :meth:`stop` DELETEs the session."""

    def __init__(self, whip_url: str, token: str, *, width: int = 320, height: int = 240,
                 fps: int = 15, audio: bool = True, video: bool = True,
                 video_codec: str = "h264", tone_hz: float = 440.0, clip: str | None = None,
                 ice_servers: list[Any] | None = None, timeout_s: float = 10.0) -> None:
        if video_codec not in ("h264", "vp8"):
            raise ValueError("video_codec must be 'h264' or 'vp8'")
        self.whip_url, self._token, self._timeout = whip_url, token, timeout_s
        self.session_url: str | None = None
        self.video_codec: str | None = None
        self._pacer = Pacer()
        self._tracks: list[MediaStreamTrack] = []
        if clip is not None:
            streams, period_us = load_clip(clip)
            for s in streams:
                if (s.kind == "video" and video) or (s.kind == "audio" and audio):
                    self._tracks.append(ClipTrack(s, period_us, self._pacer))
                    if s.kind == "video":
                        self.video_codec = s.codec
        else:
            if video:
                self._tracks.append(TestPatternTrack(width, height, fps, self._pacer))
                self.video_codec = video_codec
            if audio:
                self._tracks.append(ToneTrack(tone_hz, self._pacer))
        if not self._tracks:
            raise ValueError("nothing to publish: neither audio nor video")
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=list(ice_servers or [])))
        self._started_at: float | None = None
        self._last_report: tuple[float, dict[str, dict[str, Any]]] | None = None
        self._stopped = False

    async def start(self) -> None:
        for track in self._tracks:
            transceiver = self.pc.addTransceiver(track, direction="sendonly")
            codec = self.video_codec if track.kind == "video" else "opus"
            transceiver.setCodecPreferences(_preferences(track.kind, codec or "h264"))
        await self.pc.setLocalDescription(await self.pc.createOffer())  # gathers candidates
        headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {self._token}"}
        try:
            # follow_redirects: a cluster node sends the offer to the room's node with 307
            async with httpx.AsyncClient(timeout=self._timeout, follow_redirects=True) as http:
                response = await http.post(self.whip_url, content=self.pc.localDescription.sdp,
                                           headers=headers)
        except httpx.HTTPError as exc:
            await self.pc.close()
            raise PublishError(f"WHIP POST {self.whip_url} failed: {exc}") from exc
        if response.status_code != 201:
            await self.pc.close()
            raise PublishError(f"WHIP POST answered {response.status_code}: {response.text}",
                               response.status_code, response.text)
        location = response.headers.get("location")
        if location:
            self.session_url = urllib.parse.urljoin(str(response.url), location)
        await self.pc.setRemoteDescription(RTCSessionDescription(response.text, "answer"))
        self._started_at = time.monotonic()

    async def wait_connected(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.pc.connectionState != "connected":
            if self.pc.connectionState in ("failed", "closed"):
                raise PublishError(f"connection {self.pc.connectionState}")
            if time.monotonic() > deadline:
                raise PublishError("connection not established in time")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._seconds = time.monotonic() - self._started_at if self._started_at else 0.0
        self._state = self.pc.connectionState
        try:
            if self.session_url:
                async with httpx.AsyncClient(timeout=self._timeout) as http:
                    await http.delete(self.session_url,
                                      headers={"Authorization": f"Bearer {self._token}"})
        except httpx.HTTPError:
            pass  # the server drops the session when the connection closes anyway
        finally:
            await self.pc.close()
            for track in self._tracks:
                track.stop()

    async def report(self) -> dict[str, Any]:
        """What was sent so far, per kind: frames, RTP packets and bytes, and the rates since
        the last report."""
        now = time.monotonic()
        sent: dict[str, dict[str, Any]] = {}
        for track in self._tracks:
            sent[track.kind] = {"frames": getattr(track, "frames", 0), "packets": 0, "bytes": 0}
        for sender in self.pc.getSenders():
            if sender.track is None or sender.track.kind not in sent:
                continue
            for stat in (await sender.getStats()).values():
                if getattr(stat, "type", "") == "outbound-rtp":
                    sent[sender.track.kind]["packets"] += stat.packetsSent
                    sent[sender.track.kind]["bytes"] += stat.bytesSent
        last_at, last = self._last_report or (self._started_at or now, {})
        elapsed = max(1e-3, now - last_at)
        for kind, s in sent.items():
            before = last.get(kind, {"frames": 0, "bytes": 0})
            s["fps"] = round((s["frames"] - before["frames"]) / elapsed, 1)
            s["kbps"] = round((s["bytes"] - before["bytes"]) * 8 / 1000 / elapsed, 1)
        self._last_report = (now, sent)
        return {"state": self.pc.connectionState,
                "seconds": round(now - self._started_at, 1) if self._started_at else 0.0,
                **sent}

    @property
    def stats(self) -> PublishStats:
        frames = {t.kind: getattr(t, "frames", 0) for t in self._tracks}
        running = time.monotonic() - self._started_at if self._started_at else 0.0
        return PublishStats(
            session_url=self.session_url,
            video_codec=self.video_codec,
            video_frames=frames.get("video", 0),
            audio_frames=frames.get("audio", 0),
            seconds=getattr(self, "_seconds", running),
            connection_state=getattr(self, "_state", self.pc.connectionState),
        )


async def publish(whip_url: str, token: str, *, width: int = 320, height: int = 240,
                  fps: int = 15, audio: bool = True, video: bool = True,
                  video_codec: str = "h264", duration: float | None = None,
                  tone_hz: float = 440.0, clip: str | None = None,
                  stop: asyncio.Event | None = None,
                  ice_servers: list[Any] | None = None,
                  on_state: Callable[[str], None] | None = None,
                  on_report: Callable[[dict[str, Any]], None] | None = None,
                  report_every_s: float = 5.0) -> PublishStats:
    """Publish until ``duration`` seconds passed, ``stop`` is set, or the connection ends.
    ``on_state`` gets each connection state, ``on_report`` what was sent (:meth:`Publisher.
    report`) every ``report_every_s``."""
    publisher = Publisher(whip_url, token, width=width, height=height, fps=fps, audio=audio,
                          video=video, video_codec=video_codec, tone_hz=tone_hz, clip=clip,
                          ice_servers=ice_servers)
    ended = asyncio.Event()

    @publisher.pc.on("connectionstatechange")
    def _on_state() -> None:
        if on_state is not None:
            on_state(publisher.pc.connectionState)
        if publisher.pc.connectionState in ("failed", "closed"):
            ended.set()

    async def _reports() -> None:
        assert on_report is not None
        while True:
            await asyncio.sleep(report_every_s)
            on_report(await publisher.report())

    reporter = asyncio.ensure_future(_reports()) if on_report is not None else None

    waiters = [asyncio.ensure_future(ended.wait())]
    if stop is not None:
        waiters.append(asyncio.ensure_future(stop.wait()))
    try:
        await publisher.start()
        await asyncio.wait(waiters, timeout=duration, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        if reporter is not None:
            reporter.cancel()
        await publisher.stop()
    return publisher.stats
