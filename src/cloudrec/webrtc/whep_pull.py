"""A ``whep://`` / ``wheps://`` ingress: a recvonly WebRTC session pulled from a WHEP server.

The URL is the WHEP endpoint over http (``whep://``) or https (``wheps://``), MediaMTX's
names; a ``token`` query value, when given, is sent as ``Authorization: Bearer`` and not in
the URL. The client offers recvonly audio (Opus) and video (H.264 preferred, VP8), POSTs the
offer, applies the answer, and writes every encoded frame into the room through aiortc's
encoded-frame tap (:mod:`cloudrec.webrtc._aiortc_tap`): nothing is decoded. The publication
opens with the first frame, with the kinds the answer accepted. The session ends when the
connection fails or closes, or after ``STALL_S`` without a frame; its resource is DELETEd.
"""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import httpx
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription

from cloudrec.webrtc import _aiortc_tap as tap

if TYPE_CHECKING:
    from cloudrec.ingress.runner import IngressRunner

TIMEOUT_S = 10.0
STALL_S = 5.0
PREFERRED = {"video": ("h264", "vp8"), "audio": ("opus",)}


def endpoint(url: str) -> tuple[str, str | None]:
    """The http(s) URL of a ``whep(s)://`` URL, and its ``token`` query value."""
    parts = urlsplit(url)
    scheme = "https" if parts.scheme.lower() == "wheps" else "http"
    query = parse_qsl(parts.query, keep_blank_values=True)
    token = next((v for k, v in query if k == "token"), None)
    rest = urlencode([(k, v) for k, v in query if k != "token"])
    return urlunsplit((scheme, parts.netloc, parts.path, rest, "")), token


def _preferences(kind: str) -> list[Any]:
    capabilities = RTCRtpReceiver.getCapabilities(kind)
    caps = capabilities.codecs if capabilities is not None else []
    out = []
    for name in PREFERRED[kind]:
        out += [c for c in caps if c.mimeType.lower() == f"{kind}/{name}"]
    return out + [c for c in caps if c.mimeType.lower() == f"{kind}/rtx"]


async def pull_whep(runner: IngressRunner, stop: threading.Event) -> str:
    url, token = endpoint(runner.url)
    headers = {"Content-Type": "application/sdp"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pub = runner.publisher()
    loop = asyncio.get_running_loop()
    last = [loop.time()]
    transceivers = {}
    kinds: set[str] = set()
    codecs: dict[str, str] = {}

    def tap_for(kind: str) -> tap.FrameCallback:
        def on_frame(codec: Any, frame: Any) -> None:
            last[0] = loop.time()
            if pub.pub is None:
                pub.open(frozenset(kinds), codecs)
            pub.write((kind, codec.name.lower(), codec.clockRate, frame.data, frame.timestamp))

        return on_frame

    resource: str | None = None
    async with httpx.AsyncClient(timeout=TIMEOUT_S) as http:
        try:
            for kind in ("video", "audio"):
                t = pc.addTransceiver(kind, direction="recvonly")
                t.setCodecPreferences(_preferences(kind))
                tap.install_tap(t.receiver, tap_for(kind))
                transceivers[kind] = t
            await pc.setLocalDescription(await pc.createOffer())
            r = await http.post(url, content=pc.localDescription.sdp, headers=headers)
            if r.status_code not in (200, 201):
                raise ConnectionError(f"WHEP POST answered HTTP {r.status_code}")
            if r.headers.get("location"):
                resource = urljoin(url, r.headers["location"])
            await pc.setRemoteDescription(RTCSessionDescription(sdp=r.text, type="answer"))
            for kind, t in transceivers.items():
                name = tap.negotiated_codec(t)
                if name is not None and t.currentDirection in ("recvonly", "sendrecv"):
                    kinds.add(kind)
                    codecs[kind] = name
            if not kinds:
                raise ConnectionError("the WHEP answer accepted neither audio nor video")
            while not stop.is_set():
                await asyncio.sleep(0.2)
                if pc.connectionState in ("failed", "closed"):
                    return f"WebRTC connection {pc.connectionState}"
                if loop.time() - last[0] > STALL_S:
                    return f"no media for {STALL_S:.0f} s"
            return "stopped"
        finally:
            await pc.close()
            if resource is not None:
                try:
                    await http.delete(resource, headers={k: v for k, v in headers.items()
                                                         if k == "Authorization"})
                except httpx.HTTPError:
                    pass
