"""Debian's Janus (1.1) for the tests, in a network namespace of its own, and aiortc
publishers in its VideoRoom.

:func:`janus_server` starts ``janus`` inside a namespace the test created
(:func:`tests.e2e.netns.private_netns`) with a minimal configuration in a temporary folder: only
the VideoRoom plugin and the HTTP transport (on the namespace's veth address), one room
(``ROOM``, secret ``SECRET``) taking H.264 or VP8 and Opus. :class:`JanusPublisher` joins that
room over the HTTP API and publishes the synthetic test pattern and tone
(:mod:`cloudrec.webrtc.synthetic`).

The publishers' WebRTC leg needs a host candidate both sides can reach, and Janus skips
loopback interfaces when it gathers: the leg runs over the veth pair. Janus gathers only its
end (``ice_enforce_list``); each publisher gathers only this host's end, not every interface
as aioice does by default, and checks once connected that its candidates and nominated pairs
are on the pair.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription

from cloudrec.ingress.janus_api import JanusApi
from cloudrec.webrtc.synthetic import Pacer, TestPatternTrack, ToneTrack
from tests.e2e.netns import Netns

ROOM = 1234
SECRET = "room-secret"
HTTP_PORT = 8088  # the namespace is new: nothing else listens there
HTTPS_PORT = 8089
LIB = Path("/usr/lib/x86_64-linux-gnu/janus")


def janus_available() -> bool:
    return shutil.which("janus") is not None and (LIB / "plugins/libjanus_videoroom.so").exists()


def make_cert(folder: Path, ip: str) -> tuple[Path, Path]:
    """A self-signed certificate for ``ip`` (its own CA: the file a client trusts) and its key."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ip)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(
                ipaddress.ip_address(ip))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "janus-cert.pem", folder / "janus-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def _configs(root: Path, ns: Netns, https: bool = False) -> Path:
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
        f'nat: {{ ice_enforce_list = "{ns.ns_if}" }}\n')
    tls = ""
    if https:
        cert, key = make_cert(root, ns.ns_ip)
        tls = (f', secure_port = {HTTPS_PORT}, secure_ip = "{ns.ns_ip}" }}\n'
               f'certificates: {{ cert_pem = "{cert}", cert_key = "{key}"')
    (cfg / "janus.transport.http.jcfg").write_text(
        f'general: {{ json = "plain", base_path = "/janus", http = true, port = {HTTP_PORT},\n'
        f'  ip = "{ns.ns_ip}", https = {str(https).lower()}{tls} }}\n'
        'admin: { admin_http = false }\n')
    (cfg / "janus.plugin.videoroom.jcfg").write_text(
        f'general: {{ }}\nroom-{ROOM}: {{ description = "cloudrec test", secret = "{SECRET}",\n'
        '  publishers = 6, bitrate = 1000000, audiocodec = "opus",\n'
        '  videocodec = "h264,vp8" }\n')
    return cfg


@asynccontextmanager
async def janus_server(root: Path, ns: Netns, https: bool = False) -> AsyncIterator[str]:
    """Janus in ``ns``; yields its HTTP API URL (``http://NS_IP:HTTP_PORT/janus``), or with
    ``https`` its HTTPS one (``https://NS_IP:HTTPS_PORT/janus``, a self-signed certificate for
    NS_IP in ``root/janus-cert.pem``: the file a client must trust)."""
    root.mkdir(parents=True, exist_ok=True)
    cfg = _configs(root, ns, https)
    log = (root / "janus.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        *ns.exec("janus", "-F", str(cfg), "-C", str(cfg / "janus.jcfg")), stdout=log,
        stderr=subprocess.STDOUT)
    url = (f"https://{ns.ns_ip}:{HTTPS_PORT}/janus" if https
           else f"http://{ns.ns_ip}:{HTTP_PORT}/janus")
    verify: Any = str(root / "janus-cert.pem") if https else True
    try:
        async with httpx.AsyncClient(timeout=2, verify=verify) as http:
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


def _ice_connections(pc: RTCPeerConnection) -> list[Any]:
    """The aioice connections of ``pc``'s transports."""
    found = {id(c): c for c in (t.sender.transport.transport.iceGatherer._connection
                                for t in pc.getTransceivers())}
    return list(found.values())


def _gather_only(connection: Any, address: str) -> None:
    """Make ``connection`` gather a host candidate on ``address`` alone (aioice gathers on every
    interface of the host)."""
    gather = connection.get_component_candidates

    async def get_component_candidates(component: int, addresses: list[str],
                                       timeout: int = 5) -> list[Any]:
        return await gather(component=component, addresses=[address], timeout=timeout)

    connection.get_component_candidates = get_component_candidates


class JanusPublisher:
    """One participant of the room publishing the test pattern (``video_codec``) and a tone,
    its WebRTC leg on ``ns``'s veth pair alone."""

    def __init__(self, url: str, ns: Netns, display: str | None,
                 video_codec: str = "h264") -> None:
        self.api = JanusApi(url)
        self.ns = ns
        self.display, self.video_codec = display, video_codec
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.id: int | None = None

    def _check_pairs(self) -> None:
        """Every local candidate on this host's end of the pair, every nominated pair between
        the two ends."""
        for connection in _ice_connections(self.pc):
            hosts = {c.host for c in connection.local_candidates}
            pairs = {(p.local_candidate.host, p.remote_candidate.host)
                     for p in connection._nominated.values()}
            if hosts != {self.ns.host_ip} or pairs != {(self.ns.host_ip, self.ns.ns_ip)}:
                raise RuntimeError(f"the WebRTC leg to Janus left the veth pair: local "
                                   f"candidates {hosts}, nominated pairs {pairs}")

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
        for connection in _ice_connections(self.pc):
            _gather_only(connection, self.ns.host_ip)
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
                self._check_pairs()
                return
            if self.pc.connectionState in ("failed", "closed"):
                break
            await asyncio.sleep(0.05)
        raise RuntimeError(f"the WebRTC leg to Janus is {self.pc.connectionState}")

    async def stop(self) -> None:
        await self.pc.close()
        await self.api.close()
