"""A ``janus+http(s)://HOST:PORT/janus?room=N`` ingress: a mirror of a Janus VideoRoom.

Every publisher of the VideoRoom appears in the cloudrec room under its display name (made safe
for a uid; its Janus id when it has none, or when two share a name), joining and leaving as it
does there, each an ordinary publication (origin ``janus``) that records like any other.

Transport, decided: Janus's own ``rtp_forward`` of each publisher to UDP ports this worker opens
for it (one for audio, one for video, and the video's RTCP port so that keyframe requests, PLI
or FIR, reach the publisher through Janus), plain RTP, no ICE, no DTLS. A WebRTC subscription
would need ICE to connect both ways; on loopback Janus 1.1 never gathers a 127.0.0.1
candidate (it skips loopback interfaces whatever ``ice_enforce_list`` says) and aiortc does not
either, so it cannot connect between processes on one host, while ``rtp_forward`` is the
feature Janus has for recording and forwarding, works on any host, and costs Janus no
encryption. The forwarded RTP goes through the same receive stack as WebRTC
(:meth:`cloudrec.rtp.receiver.LeanReceiver.plain_port`: ordering, H.264/VP8 frame assembly,
receiver reports). The forward asks Janus for fixed payload types (``PT_VIDEO``,
``PT_AUDIO``), so the codecs come from the publishers' stream descriptions alone. The ports
are opened on the local address that routes to Janus (``?host=`` names another).

Presence: the Janus HTTP API. A session holds a handle of ``janus.plugin.videoroom`` joined to
the room as a publisher that never publishes (display ``cloudrec``): its events tell who
publishes (with each stream's codec and mid) and who leaves; ``listparticipants`` every
``POLL_S`` keeps the session alive and drops a publisher whose leaving was missed. ``rtp_forward``
and ``stop_rtp_forward`` need the room's ``secret`` (and Janus's ``admin_key`` where Janus is set
up to lock forwards); both are query values of the ingress URL (``?room=N&secret=…&admin_key=…``,
and ``pin`` for a room with a PIN), hidden wherever the URL is shown. When Janus goes away the
session fails, every mirrored publisher leaves the room and the runner retries with backoff.
"""

from __future__ import annotations

import asyncio
import random
import re
import socket
import threading
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import httpx

from cloudrec.ingress.janus_api import JanusApi, JanusError
from cloudrec.rtp.receiver import CodecInfo, LeanReceiver

if TYPE_CHECKING:
    from cloudrec.ingress.runner import IngressRunner, Publisher

__all__ = ["pull_janus", "janus_target", "uid_for"]

PLUGIN = "janus.plugin.videoroom"
POLL_S = 1.0
PT_VIDEO = 96
PT_AUDIO = 111
VIDEO = {"h264", "vp8"}
AUDIO = {"opus"}
MAX_UID = 64
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-.@]+")


def janus_target(url: str) -> tuple[str, dict[str, str]]:
    """The HTTP endpoint of a ``janus+http(s)://`` URL, and its query values."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower().removeprefix("janus+")
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit((scheme, parts.netloc, parts.path or "/janus", "", "")), query


def uid_for(display: Any, pid: int, taken: set[str]) -> str:
    """A publisher's uid: its display name kept to the uid charset, its id when it has none or
    when the name is taken already."""
    name = _UNSAFE.sub("_", str(display or "")).strip("_")[:MAX_UID]
    if not name:
        return str(pid)
    return name if name not in taken else f"{name[:MAX_UID - 21]}_{pid}"


def _local_address(host: str, port: int) -> str:
    """The address of this host that routes to Janus: where Janus can reach our ports."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect((host, port or 9))
        return str(s.getsockname()[0])


class _Socket(asyncio.DatagramProtocol):
    def __init__(self, handler: Any) -> None:
        self.handler = handler
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.handler is not None and self.transport is not None:
            self.handler(data, asyncio.get_running_loop().time(), self.transport.sendto, addr)


class _Forward:
    """One forwarded publisher: its ports, its receiver, its publication (the ``Upstream``)."""

    state = "connected"

    def __init__(self, mirror: _Mirror, pid: int, uid: str, streams: list[dict[str, Any]]) -> None:
        self.mirror, self.pid, self.uid = mirror, pid, uid
        self.streams = streams
        self.pub: Publisher = mirror.runner.publisher(uid)
        self.kinds: dict[str, str] = {}  # kind -> codec
        self.mids: dict[str, str] = {}  # kind -> mid
        for s in streams:
            kind, codec = s.get("type"), str(s.get("codec") or "").lower()
            if s.get("disabled") or kind in self.kinds:
                continue
            if (kind == "video" and codec in VIDEO) or (kind == "audio" and codec in AUDIO):
                self.kinds[kind], self.mids[kind] = codec, str(s.get("mid"))
        self.sockets: list[asyncio.DatagramTransport] = []
        self.stream_ids: list[int] = []
        self.receiver: LeanReceiver | None = None

    def request_keyframe(self) -> None:
        if self.receiver is not None:
            self.receiver.request_keyframe()

    def close(self) -> None:
        pass

    def _on_frame(self, kind: str, codec: str, rate: int, data: bytes, ts: int) -> None:
        if self.pub.pub is None:
            self.pub.open(frozenset(self.kinds), dict(self.kinds), upstream=self)
        self.pub.write((kind, codec, rate, data, ts))

    async def _open(self, protocol: _Socket) -> int:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: protocol,
                                                           local_addr=(self.mirror.host, 0))
        self.sockets.append(transport)
        return int(transport.get_extra_info("sockname")[1])

    async def start(self) -> None:
        m = self.mirror
        codecs = [CodecInfo(kind, name, PT_VIDEO if kind == "video" else PT_AUDIO,
                            90000 if kind == "video" else 48000)
                  for kind, name in self.kinds.items()]
        rx = self.receiver = LeanReceiver(codecs, self._on_frame,
                                          rtcp_ssrc=random.getrandbits(32), remb=False)
        streams = []
        rtcp = None
        for kind, mid in self.mids.items():
            port = await self._open(_Socket(rx.plain_port()))
            stream: dict[str, Any] = {"mid": mid, "port": port,
                                      "pt": PT_VIDEO if kind == "video" else PT_AUDIO}
            if kind == "video":
                rtcp = _Socket(None)
                stream["rtcp_port"] = await self._open(rtcp)
            streams.append(stream)
        answer = await m.api.request(m.handle, {**m.auth, "request": "rtp_forward",
                                                "room": m.room, "publisher_id": self.pid,
                                                "host": m.host, "streams": streams})
        for fwd in answer.get("forwarders") or []:
            self.stream_ids.append(int(fwd["stream_id"]))
            if fwd.get("type") == "video" and rtcp is not None and fwd.get("local_rtcp_port"):
                janus_addr = (m.janus_ip, int(fwd["local_rtcp_port"]))
                rtcp.handler = rx.plain_port(send=rtcp.transport.sendto,  # type: ignore[union-attr]
                                             addr=janus_addr)
        if rtcp is not None and rtcp.handler is None:
            rtcp.handler = rx.plain_port(latch=True)
        rx.start()

    async def stop(self, reason: str, janus_alive: bool) -> None:
        if janus_alive:
            m = self.mirror
            for sid in self.stream_ids:
                try:
                    await m.api.request(m.handle, {**m.auth, "request": "stop_rtp_forward",
                                                   "room": m.room, "publisher_id": self.pid,
                                                   "stream_id": sid})
                except (JanusError, httpx.HTTPError):
                    break
        if self.receiver is not None:
            self.receiver.close()
        for transport in self.sockets:
            transport.close()
        self.pub.close(reason)


class _Mirror:
    def __init__(self, runner: IngressRunner, stop: threading.Event) -> None:
        self.runner, self.stop = runner, stop
        base, query = janus_target(runner.url)
        self.base = base
        self.room = int(query.get("room", "0"))
        self.auth = {k: query[k] for k in ("secret", "admin_key") if query.get(k)}
        self.pin = query.get("pin")
        self.host = query.get("host") or ""
        self.janus_ip = ""
        self.api = JanusApi(base)
        self.handle = 0
        self.forwards: dict[int, _Forward] = {}
        self.alive = True

    def _taken(self) -> set[str]:
        return {f.uid for f in self.forwards.values()}

    async def _add(self, publisher: dict[str, Any]) -> None:
        pid = int(publisher["id"])
        streams = [s for s in publisher.get("streams") or [] if isinstance(s, dict)]
        old = self.forwards.get(pid)
        if old is not None:
            if old.streams == streams:
                return
            await self._remove(pid, "its streams changed")
        fwd = _Forward(self, pid, uid_for(publisher.get("display"), pid, self._taken()), streams)
        if not fwd.kinds:
            return
        self.forwards[pid] = fwd
        await fwd.start()

    async def _remove(self, pid: int, reason: str) -> None:
        fwd = self.forwards.pop(pid, None)
        if fwd is not None:
            await fwd.stop(reason, self.alive)

    async def _on_event(self, event: dict[str, Any]) -> str | None:
        if event.get("janus") in ("hangup", "detached") and event.get("sender") == self.handle:
            return f"Janus ended the session's handle ({event.get('janus')})"
        data = (event.get("plugindata") or {}).get("data") or {}
        if data.get("videoroom") == "destroyed":
            return f"the Janus room {self.room} was destroyed"
        if data.get("error_code"):
            return f"Janus refused to join room {self.room}: {data.get('error')}"
        if data.get("videoroom") == "joined":
            self.runner.media_started()  # the mirror is active, with or without publishers
        for publisher in data.get("publishers") or []:
            await self._add(publisher)
        for key in ("leaving", "unpublished"):
            if isinstance(data.get(key), int):
                await self._remove(int(data[key]), f"left the Janus room ({key})")
        return None

    async def _events(self) -> str:
        while True:
            for event in await self.api.events():
                reason = await self._on_event(event)
                if reason is not None:
                    return reason

    async def _reconcile(self) -> None:
        data = await self.api.request(self.handle, {"request": "listparticipants",
                                                    "room": self.room})
        publishing = {int(p["id"]) for p in data.get("participants") or []
                      if isinstance(p, dict) and p.get("publisher")}
        for pid in [p for p in self.forwards if p not in publishing]:
            await self._remove(pid, "left the Janus room")

    async def _resolve(self) -> None:
        """Janus's address (RTCP goes there) and ours as Janus reaches it (the ports' address;
        a ``host`` given must be an address of this host: the ports are bound to it)."""
        parts = urlsplit(self.base)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = await asyncio.get_running_loop().getaddrinfo(
            parts.hostname or "127.0.0.1", port, type=socket.SOCK_DGRAM)
        self.janus_ip = str(infos[0][4][0])
        self.host = self.host or _local_address(self.janus_ip, port)

    async def run(self) -> str:
        try:
            await self._resolve()
            await self.api.create()
            self.handle = await self.api.attach(PLUGIN)
            found = await self.api.request(self.handle, {"request": "exists", "room": self.room})
            if not found.get("exists"):
                raise JanusError(f"Janus has no VideoRoom {self.room}")
            join: dict[str, Any] = {"request": "join", "ptype": "publisher", "room": self.room,
                                    "display": "cloudrec"}
            if self.pin:
                join["pin"] = self.pin
            await self.api.send(self.handle, join)
            return await self._follow()
        except (httpx.HTTPError, JanusError, OSError):
            self.alive = False
            raise
        finally:
            for pid in list(self.forwards):
                await self._remove(pid, "the Janus mirror ended")
            await self.api.close()

    async def _follow(self) -> str:
        events = asyncio.create_task(self._events())
        try:
            while not self.stop.is_set():
                done, _ = await asyncio.wait({events}, timeout=POLL_S)
                if done:
                    return events.result()
                await self._reconcile()
            return "stopped"
        finally:
            events.cancel()
            await asyncio.gather(events, return_exceptions=True)

async def pull_janus(runner: IngressRunner, stop: threading.Event) -> str:
    """Mirror the Janus room until ``stop`` or until Janus fails (raised)."""
    return await _Mirror(runner, stop).run()
