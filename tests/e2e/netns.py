"""A network namespace of the test's own, joined to this host by a veth pair.

:func:`private_netns` creates a namespace with a random name (``cr-janus-…``), a veth pair with
random names, one end moved into the namespace, and a random ``/30`` of ``10.251.0.0/16``
(``.1`` on this host's end, ``.2`` inside), both ends and the namespace's ``lo`` up. A server
started in it (:meth:`Netns.exec`) has the namespace's veth address as its only non-loopback
address and no route anywhere else, so traffic between it and this host stays on the pair.
Everything is removed on exit: the namespace, which takes the veth pair with it.
"""

from __future__ import annotations

import ipaddress
import random
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

SUPERNET = ipaddress.ip_network("10.251.0.0/16")


class NetnsUnavailable(RuntimeError):
    """This host does not let the test create a network namespace."""


@dataclass(frozen=True)
class Netns:
    name: str
    host_if: str  # this host's end of the veth pair
    ns_if: str  # the end inside the namespace
    host_ip: str
    ns_ip: str

    def exec(self, *argv: str) -> list[str]:
        """The command line running ``argv`` inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def _free_subnet() -> ipaddress.IPv4Network:
    """A random ``/30`` of ``SUPERNET`` that no address of this host is in."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True,
                         check=False).stdout
    taken = [ipaddress.ip_interface(f.split()[3]).network for f in out.splitlines()
             if len(f.split()) > 3 and f.split()[2] == "inet"]
    subnets = 1 << (30 - SUPERNET.prefixlen)
    for _ in range(100):
        subnet = ipaddress.ip_network(
            (int(SUPERNET.network_address) + 4 * random.randrange(subnets), 30))
        if not any(subnet.overlaps(t) for t in taken):
            return subnet
    raise RuntimeError(f"no free /30 in {SUPERNET}")


@contextmanager
def private_netns(prefix: str = "cr-janus") -> Iterator[Netns]:
    """A fresh namespace and veth pair (see the module); :class:`NetnsUnavailable` when ``ip
    netns add`` is missing or not permitted here."""
    if shutil.which("ip") is None:
        raise NetnsUnavailable("iproute2's ip is not installed")
    token = secrets.token_hex(4)
    name = f"{prefix}-{token}"
    added = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True,
                           check=False)
    if added.returncode != 0:
        raise NetnsUnavailable(f"ip netns add: {added.stderr.strip()}")
    host_if, ns_if = f"vcr{token}a", f"vcr{token}b"
    try:
        subnet = _free_subnet()
        host_ip, ns_ip = (str(subnet.network_address + i) for i in (1, 2))
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _ip("link", "set", ns_if, "netns", name)
        _ip("addr", "add", f"{host_ip}/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("-n", name, "addr", "add", f"{ns_ip}/30", "dev", ns_if)
        _ip("-n", name, "link", "set", ns_if, "up")
        _ip("-n", name, "link", "set", "lo", "up")
        yield Netns(name, host_if, ns_if, host_ip, ns_ip)
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        # the pair goes with the namespace once nothing runs in it; make sure of this end
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, check=False)
