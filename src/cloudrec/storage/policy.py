"""Which storage endpoints a caller may name: the guard against probing internal ports.

startrecord's storage probe connects to ``storagecfg.endpoint`` and reports how that went, so
without a policy an authenticated caller could map the server's own network (an open port and
a closed one answer differently). The policy: an endpoint whose host is, or resolves to, a
loopback, private, link-local, multicast, reserved or unspecified address is refused with 2101
naming ``storagecfg.endpoint``, before any connection, unless the operator sets
``allow_private_storage = true`` (a MinIO on the LAN, a store on the same machine). The address
rules are the picture fetch's (:func:`cloudrec.fetch.forbidden_address`).

A name that does not resolve passes the check: the probe then says it cannot reach the store,
as for any unreachable host. The probe's own connection goes through :class:`GuardedResolver`,
which applies the same rule to the addresses it connects to, so a name whose answer changes
after the check (DNS rebinding) cannot lead the probe inside either.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from cloudrec.errors import InvalidParameter
from cloudrec.fetch import PrivateAddress, forbidden_address, resolve_checked

RESOLVE_TIMEOUT_S = 5.0
SETTING = "allow_private_storage"


def refused(host: str, detail: str) -> InvalidParameter:
    return InvalidParameter(
        "storagecfg.endpoint",
        f"{host} {detail}: this server refuses storage endpoints on loopback, private or "
        f"link-local addresses unless its setting {SETTING} is true",
    )


async def check_endpoint_host(host: str, port: int) -> None:
    """Raise 2101 when ``host`` is or resolves to an address the policy refuses."""
    try:
        await asyncio.wait_for(resolve_checked(host, port, allow_private=False), RESOLVE_TIMEOUT_S)
    except PrivateAddress as exc:
        raise refused(host, f"is a private or local address ({exc.address})") from exc
    except (OSError, UnicodeError, TimeoutError):
        pass  # unresolvable now: the probe reports the store as unreachable


class GuardedResolver(AbstractResolver):
    """aiohttp's threaded resolver, refusing names that resolve to a forbidden address. (aiohttp
    does not ask a resolver about IP literals; :func:`check_endpoint_host` covers those.)"""

    def __init__(self) -> None:
        self._inner = ThreadedResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            if forbidden_address(str(result["host"])):
                raise PrivateAddress(host, str(result["host"]))
        return results

    async def close(self) -> None:
        await self._inner.close()


def guarded_connector_args() -> dict[str, Any]:
    """``AioConfig(connector_args=...)`` for a client whose connections obey the policy."""
    return {"resolver": GuardedResolver()}
