"""aiortc's DTLS and aioice's ICE internals, adjusted per connection.

Written for, and pinned to, **aiortc 1.16.0** and **aioice 0.13.0** (checked at import and by
:func:`check_internals`, which :class:`~cloudrec.webrtc.ingest.WebRtcIngest` runs and the
interop tests assert). :func:`prepare` adjusts one answering peer connection between
``setRemoteDescription`` and ``setLocalDescription``: nothing is patched globally, so other
peer connections in the process (``cloudrec publish``) keep aiortc's behaviour.

DTLS ciphers (peers with an RSA certificate)
    ``RTCCertificate._create_ssl_context`` offers only ``ECDHE-ECDSA-*`` suites. aiortc's own
    certificate is ECDSA, so as the DTLS server that is all it can use; but an answer to a WHIP
    offer (``a=setup:actpass``) makes aiortc the DTLS *client*, and the suite then has to match
    the peer's certificate. GStreamer's webrtcbin (and every client built on it) has an RSA-2048
    one and answers ``no shared cipher``. The fix adds the ``ECDHE-RSA-*`` twins of the same
    four suites: an RSA server can pick them, an ECDSA one still picks what it did. The
    certificate (so the fingerprint in the answer) is unchanged: the DTLS transports get an
    :class:`RTCCertificate` subclass over the same key and certificate
    (``RTCDtlsTransport.__local_certificate``).

ICE liveness (publishers that never answer consent checks)
    aioice's ``Connection.connect()`` starts ``query_consent()``, which closes the connection
    after 6 unanswered checks (~30 s, RFC 7675) even while media arrives. FFmpeg's WHIP muxer
    never answers them. After ``connect()`` returns, that task is replaced by one that still
    sends a check every ~5 s (a keepalive for NATs, and consent for peers that answer) but
    closes only when nothing at all (media, DTLS, STUN requests or responses) has come from a
    nominated pair's remote address for ``liveness_timeout_s``, like ICE-lite servers. Arrival
    is seen by wrapping the nominated sockets' ``StunProtocol.datagram_received`` with a
    source-address test, which costs a tuple lookup per packet. The test is by address, not by
    authentication: a spoofer who knows both addresses can only keep a session open as long
    as it spoofs, and the server only sends RTCP feedback there, to a peer that once completed
    ICE and DTLS.

Candidates (announced addresses, a port range)
    ``Connection.get_component_candidates`` binds each host socket with ``local_addr=(address,
    0)``, so any ephemeral port. With a port range it is replaced, for this connection, by a
    version that binds inside the range, then lets aioice's own code do the TURN part (given no
    address to bind) and asks the STUN server, if any, for each IPv4 socket's reflexive address.
    Announced addresses add a host candidate per gathered host candidate of the same family,
    with the same port and a slightly lower priority (a peer that can reach both prefers the
    direct path). They appear in the answer only: aioice pairs by socket, not by candidate.

Media (the lean receive path, :mod:`cloudrec.rtp.receiver`)
    :func:`attach_media` registers, per ICE connection of a peer connection, a handler that the
    same ``datagram_received`` wrapper calls for every SRTP/SRTCP datagram (first byte
    128-191), before aioice tries it as STUN and queues it for the DTLS task. The wrapper is on
    *every* socket of the connection from the moment ``connect()`` returns (before the DTLS
    handshake, so before any media), and media is taken from any source address, as aioice
    takes it: libsrtp authenticates each packet, and a forgery is dropped. Taking media only
    from the nominated pair's address is not enough: the pair the publisher sends on can be one
    this side nominates seconds later (seen with 16 publishers, each with an IPv4 and an IPv6
    candidate: this side's first nominated pair was IPv4, the media came over IPv6), or a NAT
    may rebind the publisher's port; those packets went aiortc's way, its receiver emitted
    frames on a timestamp origin of its own, and when the lean path took over the recording's
    clock stepped back by seconds, which cost the recording the frames until it caught up. The
    handler reads the DTLS transport's libsrtp sessions (``_rx_srtp``/``_tx_srtp``, set when
    the handshake completes) and answers through the socket the datagram came in on, to its
    source address. DTLS and STUN always go aiortc's and aioice's way.

    The lean send path (:mod:`cloudrec.rtp.sender`) takes a viewer's SRTCP through the same
    hook, and sends through :func:`media_route` (the nominated pair's socket and remote
    address) until the viewer's first authentic datagram says where it sends from.
    :func:`swallow_media` is for load generators: a connected peer's media counted and dropped.
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import ipaddress
import logging
import random
import socket
import time
import weakref
from collections.abc import Callable
from typing import Any

import aioice
import aiortc
from aioice import Candidate, Connection, stun, turn
from aioice import ice as aioice_ice
from aioice.candidate import candidate_foundation, candidate_priority
from aiortc import RTCCertificate, RTCPeerConnection
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcicetransport import RTCIceGatherer

from cloudrec.webrtc.ice import IceOptions

__all__ = ["AIOICE_VERSION", "AIORTC_VERSION", "DTLS_CIPHERS", "MediaHandler",
           "TransportInternalsError", "attach_media", "check_internals", "media_route",
           "prepare", "swallow_media"]

AIORTC_VERSION = "1.16.0"
AIOICE_VERSION = "0.13.0"

_FOUND = (aiortc.__version__, aioice.__version__)
if _FOUND != (AIORTC_VERSION, AIOICE_VERSION):  # pragma: no cover - depends on the environment
    raise ImportError(
        f"cloudrec.webrtc._aiortc_transport was written for aiortc {AIORTC_VERSION} and aioice "
        f"{AIOICE_VERSION}, found {aiortc.__version__} and {aioice.__version__}; re-check the "
        "internals it uses before upgrading"
    )

logger = logging.getLogger(__name__)

# aiortc 1.16.0's list, each ECDSA suite followed by its RSA twin.
_AIORTC_CIPHERS = (b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305:"
                   b"ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA")
DTLS_CIPHERS = b":".join(
    suite + b":" + suite.replace(b"-ECDSA-", b"-RSA-") for suite in _AIORTC_CIPHERS.split(b":")
)

_LOCAL_CERTIFICATE = "_RTCDtlsTransport__local_certificate"
_CONSENT_INTERVAL = aioice_ice.CONSENT_INTERVAL

_prepared: weakref.WeakSet[Connection] = weakref.WeakSet()

# (datagram, time.monotonic(), send_data(data, addr), addr) -> True when it took the datagram
MediaHandler = Callable[[bytes, float, Callable[[bytes, Any], None], Any], bool]
_media: weakref.WeakKeyDictionary[Connection, MediaHandler] = weakref.WeakKeyDictionary()


class TransportInternalsError(RuntimeError):
    """aiortc's or aioice's internals are not where this module expects them."""


class _Certificate(RTCCertificate):
    """aiortc's certificate, whose DTLS context also offers the ECDHE-RSA suites."""

    def _create_ssl_context(self, srtp_profiles: list[Any]) -> Any:
        context = super()._create_ssl_context(srtp_profiles)
        context.set_cipher_list(DTLS_CIPHERS)
        return context


def prepare(pc: RTCPeerConnection, options: IceOptions) -> None:
    """Adjust ``pc``'s transports: after ``setRemoteDescription`` (transports are final, BUNDLE
    applied), before ``setLocalDescription`` (which gathers and connects)."""
    transports = {t.receiver.transport for t in pc.getTransceivers()}
    if pc.sctp is not None:
        transports.add(pc.sctp.transport)
    for dtls in transports:
        certificate = getattr(dtls, _LOCAL_CERTIFICATE)
        if not isinstance(certificate, _Certificate):
            setattr(dtls, _LOCAL_CERTIFICATE, _Certificate(certificate._key, certificate._cert))
        connection = dtls.transport.iceGatherer._connection
        if connection not in _prepared:
            _prepared.add(connection)
            _hook_connection(connection, options)


def attach_media(pc: RTCPeerConnection,
                 make_handler: Callable[[Callable[[], tuple[Any, Any]]], MediaHandler]) -> None:
    """Give every SRTP/SRTCP datagram of ``pc``'s transports to a handler: ``make_handler``
    gets, per DTLS transport, a function returning its ``(rx, tx)`` libsrtp sessions (``None``
    before the handshake). Call between ``setRemoteDescription`` and ``setLocalDescription``."""
    transports = {t.receiver.transport for t in pc.getTransceivers()}
    for dtls in transports:
        connection = dtls.transport.iceGatherer._connection
        _media[connection] = make_handler(_srtp_sessions(dtls))


def media_route(pc: RTCPeerConnection) -> Callable[[], tuple[Callable[[bytes, Any], None], Any]
                                                   | None]:
    """A function giving ``(sendto, address)`` of ``pc``'s nominated ICE pair (the socket's
    synchronous ``sendto`` and the remote address), or None while none is nominated: where
    the lean send path sends before the peer has sent anything."""
    connections = [dtls.transport.iceGatherer._connection
                   for dtls in {t.receiver.transport for t in pc.getTransceivers()}]

    def route() -> tuple[Callable[[bytes, Any], None], Any] | None:
        for connection in connections:
            for pair in list(connection._nominated.values()):
                udp = getattr(pair.protocol, "transport", None)
                if udp is not None:
                    return udp.sendto, pair.remote_addr
        return None
    return route


def swallow_media(pc: RTCPeerConnection) -> list[int]:
    """Count and drop every SRTP/SRTCP datagram that comes to ``pc``'s connected ICE sockets
    from now on (nothing is decrypted; aiortc's receivers get nothing): a load generator's
    viewer that costs a Python call per packet. Returns ``[datagrams, bytes]``, updated."""
    counts = [0, 0]
    for dtls in {t.receiver.transport for t in pc.getTransceivers()}:
        connection = dtls.transport.iceGatherer._connection
        nominated = [pair.protocol for pair in connection._nominated.values()]
        protocols = {id(p): p for p in [*connection._protocols, *nominated]}
        for protocol in protocols.values():
            received = protocol.datagram_received

            def datagram_received(data: bytes, addr: Any, received: Any = received) -> None:
                if data and 127 < data[0] < 192:
                    counts[0] += 1
                    counts[1] += len(data)
                    return
                received(data, addr)

            protocol.datagram_received = datagram_received  # type: ignore[method-assign,assignment]
    return counts


def _srtp_sessions(dtls: Any) -> Callable[[], tuple[Any, Any]]:
    """A function returning ``dtls``'s current ``(rx, tx)`` libsrtp sessions."""
    return lambda: (dtls._rx_srtp, dtls._tx_srtp)


# -- ICE ---------------------------------------------------------------------------------------


def _hook_connection(connection: Connection, options: IceOptions) -> None:
    connect, close = connection.connect, connection.close

    async def connect_then_watch() -> None:
        await connect()
        # watched now, not from the task: the DTLS handshake (then media) may follow at once.
        # The handler leaves the module's map: it refers (through its receiver and session) to
        # the connection itself, so as a WeakKeyDictionary value it would keep its own key, and
        # with it the whole peer connection, alive for ever.
        live = _Liveness(_media.pop(connection, None))
        live.follow(connection)
        aioice_consent = connection._query_consent_task
        if aioice_consent is not None:
            aioice_consent.cancel()
        connection._query_consent_task = asyncio.create_task(
            _keep_alive(connection, live, options.liveness_timeout_s))

    async def forget_then_close() -> None:  # one that never connected leaves the map here
        _media.pop(connection, None)
        await close()

    connection.connect = connect_then_watch  # type: ignore[method-assign]
    connection.close = forget_then_close  # type: ignore[method-assign]
    if options.port_range is None and not options.announced_addresses:
        return
    gather = connection.get_component_candidates

    async def get_component_candidates(component: int, addresses: list[str],
                                       timeout: int = 5) -> list[Candidate]:
        if options.port_range is None:
            candidates = await gather(component=component, addresses=addresses, timeout=timeout)
        else:
            candidates = await _candidates_in_range(connection, component, addresses,
                                                    options.port_range, timeout)
            candidates += await gather(component=component, addresses=[], timeout=timeout)
        return candidates + _announced(candidates, options.announced_addresses)

    connection.get_component_candidates = get_component_candidates  # type: ignore[method-assign]


class _Liveness:
    """When something last came from a nominated pair's remote address; and the media hook,
    on every socket of the connection."""

    __slots__ = ("heard", "peers", "watched", "media")

    def __init__(self, media: MediaHandler | None = None) -> None:
        self.media = media
        self.heard = time.monotonic()
        self.peers: set[tuple[Any, ...]] = set()
        self.watched: set[int] = set()

    def follow(self, connection: Connection) -> None:
        """Track the currently nominated pairs (aioice may nominate again after connecting);
        every socket is watched, a nominated pair's socket included."""
        peers = set()
        protocols = list(connection._protocols)
        for pair in connection._nominated.values():
            peers.add(tuple(pair.remote_addr))
            protocols.append(pair.protocol)
        for protocol in protocols:
            if id(protocol) not in self.watched:
                self.watched.add(id(protocol))
                self._watch(protocol)
        self.peers = peers

    def _watch(self, protocol: Any) -> None:
        if getattr(protocol, "transport", None) is None:
            return  # closed (or never opened): nothing comes in on it
        received = protocol.datagram_received
        send = protocol.transport.sendto  # what aioice's (async) send_data calls
        peers_of, monotonic = self, time.monotonic

        def datagram_received(data: bytes, addr: tuple[Any, ...]) -> None:
            now = monotonic()
            if (addr[0], addr[1]) in peers_of.peers:
                peers_of.heard = now
            media = peers_of.media
            if media is not None and data and 127 < data[0] < 192 and media(
                    data, now, send, addr):
                return
            received(data, addr)

        protocol.datagram_received = datagram_received


async def _keep_alive(connection: Connection, live: _Liveness, timeout_s: float) -> None:
    interval = min(_CONSENT_INTERVAL, timeout_s / 3)
    assert connection.remote_password is not None
    key = connection.remote_password.encode("utf8")
    while True:
        await asyncio.sleep(interval * (0.8 + 0.4 * random.random()))
        live.follow(connection)
        for pair in list(connection._nominated.values()):
            try:
                await pair.protocol.request(connection.build_request(pair, nominate=False),
                                            pair.remote_addr, integrity_key=key,
                                            retransmissions=0)
            except stun.TransactionError:
                pass  # an answer, if any, was already counted on arrival
        silent = time.monotonic() - live.heard
        if silent >= timeout_s:
            logger.info("ICE: nothing from %s for %.1f s, closing", sorted(live.peers), silent)
            connection._query_consent_task = None  # close() must not cancel this task
            await connection.close()
            return


async def _bind_in_range(address: str, ports: tuple[int, int], factory: Any) -> Any:
    """A datagram endpoint on ``address`` at a free port of ``ports``, tried from a random one."""
    loop = asyncio.get_running_loop()
    low, high = ports
    first = random.randint(low, high)
    for port in [*range(first, high + 1), *range(low, first)]:
        try:
            _, protocol = await loop.create_datagram_endpoint(factory, local_addr=(address, port))
            return protocol
        except OSError as exc:
            if exc.errno not in (errno.EADDRINUSE, errno.EACCES):
                raise
    raise OSError(errno.EADDRINUSE, f"no free UDP port in {low}-{high}")


async def _candidates_in_range(connection: Connection, component: int, addresses: list[str],
                               ports: tuple[int, int], timeout: int) -> list[Candidate]:
    """Host candidates bound inside ``ports`` (as aioice binds them, port aside), and their
    server-reflexive twins when a STUN server is configured."""
    candidates: list[Candidate] = []
    protocols = []
    for address in addresses:
        try:
            protocol = await _bind_in_range(address, ports,
                                            lambda: aioice_ice.StunProtocol(connection))
        except OSError as exc:
            logger.warning("ICE: cannot bind %s in UDP ports %d-%d: %s", address, *ports, exc)
            continue
        sock = protocol.transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, turn.UDP_SOCKET_BUFFER_SIZE)
            except OSError:
                pass
        host, port = protocol.transport.get_extra_info("sockname")[:2]
        protocol.local_candidate = Candidate(
            foundation=candidate_foundation("host", "udp", host), component=component,
            transport="udp", priority=candidate_priority(component, "host"), host=host,
            port=port, type="host")
        protocols.append(protocol)
        candidates.append(protocol.local_candidate)
    connection._protocols += protocols
    if connection.stun_server:
        reflexive = aioice_ice.server_reflexive_candidate
        tasks = [asyncio.create_task(reflexive(p, connection.stun_server))
                 for p in protocols if ipaddress.ip_address(p.local_candidate.host).version == 4]
        if tasks:
            done, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            candidates += [t.result()[0] for t in done if t.exception() is None]
    return candidates


def _announced(candidates: list[Candidate], announced: tuple[str, ...]) -> list[Candidate]:
    twins = []
    for candidate in candidates:
        if candidate.type != "host":
            continue
        version = ipaddress.ip_address(candidate.host).version
        for rank, address in enumerate(announced, start=1):
            if ipaddress.ip_address(address).version != version or address == candidate.host:
                continue
            twins.append(Candidate(
                foundation=candidate_foundation("host", "udp", address),
                component=candidate.component, transport="udp",
                priority=candidate_priority(candidate.component, "host", 65535 - rank),
                host=address, port=candidate.port, type="host"))
    return twins


# -- the check ---------------------------------------------------------------------------------


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise TransportInternalsError(f"aiortc/aioice internals moved: {what}")


def check_internals() -> None:
    """Raise :class:`TransportInternalsError` when an internal this module uses has moved."""
    source = inspect.getsource
    _require(callable(getattr(RTCCertificate, "_create_ssl_context", None)),
             "RTCCertificate._create_ssl_context")
    _require(_AIORTC_CIPHERS in source(RTCCertificate._create_ssl_context).encode(),
             "RTCCertificate._create_ssl_context's cipher list")
    _require("self.__local_certificate = certificate" in source(RTCDtlsTransport.__init__)
             and "self.__local_certificate._create_ssl_context(" in source(RTCDtlsTransport.start),
             "RTCDtlsTransport.__local_certificate")
    certificate = RTCCertificate.generateCertificate()
    _require(hasattr(certificate, "_key") and hasattr(certificate, "_cert"),
             "RTCCertificate._key/_cert")
    gatherer = RTCIceGatherer(iceServers=[])
    connection = getattr(gatherer, "_connection", None)
    _require(isinstance(connection, Connection), "RTCIceGatherer._connection")
    for name in ("_protocols", "_nominated", "_query_consent_task", "remote_password",
                 "stun_server"):
        _require(hasattr(connection, name), f"aioice Connection.{name}")
    _require("self._query_consent_task = asyncio.create_task(self.query_consent())"
             in source(Connection.connect), "Connection.connect starts query_consent")
    _require("self.get_component_candidates(component=component, addresses=addresses)"
             in source(Connection.gather_candidates), "Connection.gather_candidates")
    _require(list(inspect.signature(Connection.get_component_candidates).parameters)
             == ["self", "component", "addresses", "timeout"],
             "Connection.get_component_candidates signature")
    _require("local_addr=(address, 0)" in source(Connection.get_component_candidates),
             "Connection.get_component_candidates binding")
    _require(callable(getattr(Connection, "build_request", None)), "Connection.build_request")
    _require("self.receiver.data_received(" in source(aioice_ice.StunProtocol.datagram_received)
             and callable(getattr(aioice_ice.StunProtocol, "request", None)),
             "aioice StunProtocol")
    _require("self.transport.sendto(data, addr)" in source(aioice_ice.StunProtocol.send_data),
             "aioice StunProtocol.send_data")
    _require("self._rx_srtp = Session(rx_policy)" in source(RTCDtlsTransport._setup_srtp)
             and "self._tx_srtp = Session(tx_policy)" in source(RTCDtlsTransport._setup_srtp),
             "RTCDtlsTransport._rx_srtp/_tx_srtp")
    _require(isinstance(getattr(aioice_ice.CandidatePair, "remote_addr", None), property),
             "aioice CandidatePair.remote_addr")
    _require(callable(getattr(aioice_ice, "server_reflexive_candidate", None))
             and isinstance(getattr(turn, "UDP_SOCKET_BUFFER_SIZE", None), int)
             and isinstance(_CONSENT_INTERVAL, (int, float)),
             "aioice server_reflexive_candidate / UDP_SOCKET_BUFFER_SIZE / CONSENT_INTERVAL")
