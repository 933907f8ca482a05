"""Debian's Janus (1.1) on loopback for the tests, and aiortc publishers in its VideoRoom.

:func:`janus_server` starts ``janus`` with a minimal configuration in a temporary folder: only
the VideoRoom plugin and the HTTP transport (on a free loopback port), one room (``ROOM``,
secret ``SECRET``) taking H.264 or VP8 and Opus. :class:`JanusPublisher` joins that room over the
HTTP API and publishes the synthetic test pattern and tone (:mod:`cloudrec.webrtc.synthetic`).

The publishers' WebRTC leg needs a host candidate both sides can reach: Janus skips loopback
interfaces when it gathers, and aiortc does too, so the leg connects over the host's first
non-loopback IPv4 address (:func:`host_address`); on a host with none the tests are skipped.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription

from cloudrec.ingress.janus_api import JanusApi
from cloudrec.webrtc.synthetic import Pacer, TestPatternTrack, ToneTrack

ROOM = 1234
SECRET = "room-secret"
LIB = Path("/usr/lib/x86_64-linux-gnu/janus")


def janus_available() -> bool:
    return shutil.which("janus") is not None and (LIB / "plugins/libjanus_videoroom.so").exists()


def host_address() -> str | None:
    """This host's first non-loopback IPv4 address, where Janus and aiortc both gather."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"],
                         capture_output=True, text=True, check=False).stdout
    for line in out.splitlines():
        fields = line.split()
        if "inet" in fields:
            return fields[fields.index("inet") + 1].split("/")[0]
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _configs(root: Path, port: int) -> Path:
    cfg = root / "cfg"
    for sub, names in (("plugins", ["libjanus_videoroom.so"]),
                       ("transports", ["libjanus_http.so"]), ("events", []), ("loggers", [])):
        (root / sub).mkdir(parents=True)
        for name in names:
            (root / sub / name).symlink_to(LIB / sub / name)
    cfg.mkdir()
    (cfg / "janus.jcfg").write_text(
        "general: {\n"
        f'  configs_folder = "{cfg}"\n  plugins_folder = "{root}/plugins"\n'
        f'  transports_folder = "{root}/transports"\n  events_folder = "{root}/events"\n'
        f'  loggers_folder = "{root}/loggers"\n  debug_level = 4\n  session_timeout = 60\n'
        "}\nmedia: { rtp_port_range = \"20000-40000\" }\n"
        'nat: { ice_ignore_list = "vmnet" }\n')
    (cfg / "janus.transport.http.jcfg").write_text(
        f'general: {{ json = "plain", base_path = "/janus", http = true, port = {port},\n'
        '  ip = "127.0.0.1", https = false }\nadmin: { admin_http = false }\n')
    (cfg / "janus.plugin.videoroom.jcfg").write_text(
        f'general: {{ }}\nroom-{ROOM}: {{ description = "cloudrec test", secret = "{SECRET}",\n'
        '  publishers = 6, bitrate = 1000000, audiocodec = "opus",\n'
        '  videocodec = "h264,vp8" }\n')
    return cfg


@asynccontextmanager
async def janus_server(root: Path) -> AsyncIterator[str]:
    """Janus on a free loopback port; yields its HTTP API URL (``http://127.0.0.1:P/janus``)."""
    port = _free_port()
    cfg = _configs(root, port)
    log = (root / "janus.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        "janus", "-F", str(cfg), "-C", str(cfg / "janus.jcfg"), stdout=log,
        stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/janus"
    try:
        async with httpx.AsyncClient(timeout=2) as http:
            for _ in range(100):
                try:
                    if (await http.get(url + "/info")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if proc.returncode is not None:
                    raise RuntimeError((root / "janus.log").read_text()[-2000:])
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError("janus did not answer in 10 s")
        yield url
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        log.close()


def _preferences(kind: str, codec: str) -> list[Any]:
    caps = RTCRtpSender.getCapabilities(kind).codecs
    return [c for c in caps if c.mimeType.lower() == f"{kind}/{codec}"]


class JanusPublisher:
    """One participant of the room publishing the test pattern (``video_codec``) and a tone."""

    def __init__(self, url: str, display: str | None, video_codec: str = "h264") -> None:
        self.api = JanusApi(url)
        self.display, self.video_codec = display, video_codec
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.id: int | None = None

    async def _event(self, handle: int, what: str, timeout: float = 10.0) -> dict[str, Any]:
        async def wait() -> dict[str, Any]:
            while True:
                for event in await self.api.events():
                    data = (event.get("plugindata") or {}).get("data") or {}
                    if event.get("sender") == handle and (data.get("videoroom") == what
                                                          or "configured" in data):
                        if data.get("error_code"):
                            raise RuntimeError(f"Janus: {data}")
                        return event
        return await asyncio.wait_for(wait(), timeout)

    async def start(self) -> None:
        await self.api.create()
        handle = await self.api.attach("janus.plugin.videoroom")
        join: dict[str, Any] = {"request": "join", "ptype": "publisher", "room": ROOM}
        if self.display is not None:
            join["display"] = self.display
        await self.api.send(handle, join)
        joined = await self._event(handle, "joined")
        self.id = int(joined["plugindata"]["data"]["id"])
        pacer = Pacer()
        for track, codec in ((TestPatternTrack(320, 240, 15, pacer), self.video_codec),
                             (ToneTrack(440.0, pacer), "opus")):
            transceiver = self.pc.addTransceiver(track, direction="sendonly")
            transceiver.setCodecPreferences(_preferences(track.kind, codec))
        await self.pc.setLocalDescription(await self.pc.createOffer())
        offer = {"type": "offer", "sdp": self.pc.localDescription.sdp}
        await self.api.send(handle, {"request": "publish", "audio": True, "video": True}, offer)
        answer = await self._event(handle, "event")
        jsep = answer.get("jsep")
        if not jsep:
            raise RuntimeError(f"Janus gave no answer to the offer: {answer}")
        await self.pc.setRemoteDescription(RTCSessionDescription(jsep["sdp"], jsep["type"]))
        for _ in range(200):
            if self.pc.connectionState == "connected":
                return
            if self.pc.connectionState in ("failed", "closed"):
                break
            await asyncio.sleep(0.05)
        raise RuntimeError(f"the WebRTC leg to Janus is {self.pc.connectionState}")

    async def stop(self) -> None:
        await self.pc.close()
        await self.api.close()
