"""The SSRF guard for source URLs: a host that is, or resolves to, a loopback, private,
link-local, multicast, reserved or unspecified address is refused unless the operator sets
``allow_private_urls`` (the rule pictures and storage endpoints follow,
:func:`cloudrec.fetch.forbidden_address`). The API checks it (2101 naming ``url``) and the
worker checks again before each connection, so a name whose answer changed is caught too.
"""

from __future__ import annotations

import asyncio
import socket

from cloudrec.errors import InvalidParameter
from cloudrec.fetch import PrivateAddress, resolve_checked
from cloudrec.models.ingress import source_host_port

RESOLVE_TIMEOUT_S = 5.0


class SourceRefused(Exception):
    """The source's host is a private or local address (at connect time)."""


async def check_source(url: str, *, allow_private: bool, at_connect: bool = False) -> None:
    """Raise when the URL's host is forbidden: 2101 naming ``url`` for the API,
    :class:`SourceRefused` at connect time. A name that does not resolve passes here (the
    connection then fails and the ingress retries)."""
    if allow_private:
        return
    host, port = source_host_port(url)
    try:
        await asyncio.wait_for(resolve_checked(host, port, allow_private=False),
                               RESOLVE_TIMEOUT_S)
    except PrivateAddress as exc:
        message = (f"{host} is a private or local address ({exc.address}): this server refuses "
                   "such sources unless its setting allow_private_urls is true")
        if at_connect:
            raise SourceRefused(message) from exc
        raise InvalidParameter("url", message) from exc
    except (OSError, UnicodeError, TimeoutError, socket.gaierror):
        pass
