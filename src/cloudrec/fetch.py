"""Fetching pictures named by users (``patchUrl``, watermark and background images) safely.

Only http(s); every hop of a redirect chain (at most ``max_redirects``) is checked; a host that
resolves to a loopback, link-local, private, multicast, reserved or unspecified address is
refused unless ``allow_private`` (the ``allow_private_urls`` setting) says otherwise — the SSRF
guard. Bodies are capped at ``max_bytes`` and the whole fetch at ``timeout_s``: a URL that
fails gives a clear error, never a hang. What remains: a host whose DNS answer changes between
the check and the connection (DNS rebinding) is not pinned.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urljoin, urlsplit

import httpx

from cloudrec.errors import RecordingError

FETCH_ERROR = 4016  # "Invalid mixed stream parameters": the picture a parameter names is unusable


class FetchError(RecordingError):
    code = FETCH_ERROR


def _forbidden(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


async def check_url(url: str, *, allow_private: bool = False, what: str = "url") -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchError(f"{what}: only http(s) URLs with a host can be fetched")
    if allow_private:
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise FetchError(f"{what}: cannot resolve {parts.hostname}") from exc
    for info in infos:
        if _forbidden(str(info[4][0])):
            raise FetchError(f"{what}: {parts.hostname} is a private or local address; refused")


async def fetch_bytes(
    url: str,
    *,
    what: str = "url",
    max_bytes: int = 5 * 1024 * 1024,
    timeout_s: float = 5.0,
    max_redirects: int = 3,
    allow_private: bool = False,
    transport: httpx.AsyncBaseTransport | None = None,
) -> bytes:
    """GET ``url`` under the rules above; raises FetchError (4016) naming ``what``."""
    try:
        async with asyncio.timeout(timeout_s):
            async with httpx.AsyncClient(follow_redirects=False, transport=transport,
                                         timeout=timeout_s) as client:
                for _ in range(max_redirects + 1):
                    await check_url(url, allow_private=allow_private, what=what)
                    async with client.stream("GET", url) as response:
                        if response.is_redirect:
                            url = urljoin(url, response.headers.get("location", ""))
                            continue
                        if response.status_code != 200:
                            raise FetchError(f"{what}: HTTP {response.status_code} from the server")
                        chunks: list[bytes] = []
                        size = 0
                        async for chunk in response.aiter_bytes():
                            size += len(chunk)
                            if size > max_bytes:
                                raise FetchError(f"{what}: larger than {max_bytes} bytes")
                            chunks.append(chunk)
                        return b"".join(chunks)
                raise FetchError(f"{what}: more than {max_redirects} redirects")
    except TimeoutError as exc:
        raise FetchError(f"{what}: no answer within {timeout_s:.0f} s") from exc
    except httpx.HTTPError as exc:
        raise FetchError(f"{what}: {type(exc).__name__}") from exc
