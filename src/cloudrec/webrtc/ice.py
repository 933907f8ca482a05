"""ICE settings of a :class:`~cloudrec.webrtc.ingest.WebRtcIngest`, checked once when it is built.

``announced_addresses``
    Addresses put in the SDP answer's candidates *besides* the interface addresses: the public
    address of a server behind 1:1 NAT (a cloud VM's elastic IP, a port-forwarded host). Each
    gathered host candidate gets a twin with the same port on every announced address of its IP
    family, so a peer outside reaches the socket through the NAT and a peer on the LAN (or on
    loopback, as the tests publish) still reaches it directly. Interface addresses are kept
    rather than replaced for that reason; they only cost a few failed checks to far peers.
    Addresses must be IP literals: a host name would be resolved by every peer differently.

``port_range``
    ``(low, high)``, inclusive: the UDP ports the WebRTC sockets bind, so a firewall can be
    opened for exactly them. One publication uses one port per interface address (media is
    bundled); a range with no free port left makes that publication's answer carry no host
    candidate on that address, so the range must be sized for the expected publishers.

``liveness_timeout_s``
    A publisher is dropped when nothing at all has arrived from its selected address (media,
    DTLS, its own STUN checks or answers to ours) for this long. It replaces RFC 7675's rule
    (drop when our consent checks go unanswered for 30 s) because publishers that never answer
    them, such as FFmpeg's WHIP muxer, are common: media servers run ICE-lite for the same
    reason. The default is the RFC's 30 s.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["IceOptions"]


@dataclass(frozen=True)
class IceOptions:
    announced_addresses: tuple[str, ...] = ()
    port_range: tuple[int, int] | None = None
    liveness_timeout_s: float = 30.0

    @classmethod
    def build(
        cls,
        announced_addresses: Iterable[str] = (),
        port_range: tuple[int, int] | None = None,
        liveness_timeout_s: float = 30.0,
    ) -> IceOptions:
        """Validated options; ValueError names the setting that is wrong."""
        if isinstance(announced_addresses, str):
            announced_addresses = [a for a in announced_addresses.split(",")]
        announced: list[str] = []
        for raw in announced_addresses:
            text = str(raw).strip()
            if not text:
                continue
            try:
                address = str(ipaddress.ip_address(text))
            except ValueError:
                raise ValueError(f"announced address {text!r} is not an IP address") from None
            if address not in announced:
                announced.append(address)
        ports: tuple[int, int] | None = None
        if port_range is not None:
            low, high = (int(p) for p in port_range)
            if not 1 <= low <= high <= 65535:
                raise ValueError(f"ICE port range {low}-{high} is not within 1-65535, low first")
            ports = (low, high)
        if not liveness_timeout_s > 0:
            raise ValueError("ICE liveness timeout must be positive")
        return cls(tuple(announced), ports, float(liveness_timeout_s))
