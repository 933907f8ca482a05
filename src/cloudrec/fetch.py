"""Fetching pictures named by users (``patchUrl``, watermark and background images) safely.

Only http(s); every hop of a redirect chain (at most ``max_redirects``) is checked; a host that
resolves to a loopback, link-local, private, multicast, reserved or unspecified address is
refused unless ``allow_private`` (the ``allow_private_urls`` setting) says otherwise — the SSRF
guard. Bodies are capped at ``max_bytes`` and the whole fetch at ``timeout_s``: a URL that
fails gives a clear error, never a hang.

Each hop is resolved once and the connection goes to the address that was checked (DNS
rebinding: a name whose answer changes between the check and the connection cannot lead the
fetch elsewhere). The request is sent to ``scheme://ADDRESS:port/path`` with the name in the
``Host`` header and, over https, in the TLS server name, so that virtual hosts and certificate
checks see the name as usual.

The address checks (:func:`forbidden_address`, :func:`resolve_checked`) serve the storage
endpoint policy too (:mod:`cloudrec.storage.policy`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import SplitResult, urljoin, urlsplit

import httpx

from cloudrec.errors import RecordingError

FETCH_ERROR = 4016  # "Invalid mixed stream parameters": the picture a parameter names is unusable


class FetchError(RecordingError):
    code = FETCH_ERROR


class PrivateAddress(OSError):
    """A host resolved to an address the SSRF guard refuses."""

    def __init__(self, host: str, address: str) -> None:
        super().__init__(f"{host} is a private or local address ({address})")
        self.host = host
        self.address = address


def forbidden_address(address: str) -> bool:
    """Loopback, private, link-local, multicast, reserved or unspecified (IPv4-mapped IPv6
    addresses are judged as the IPv4 address they carry)."""
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


async def resolve_checked(host: str, port: int, *, allow_private: bool) -> list[str]:
    """Every address ``host`` resolves to; raises :class:`PrivateAddress` when one of them is
    forbidden (unless ``allow_private``) and ``socket.gaierror`` when it does not resolve.
    One forbidden answer refuses the name: a client could be led to any of them."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not allow_private:
        for address in addresses:
            if forbidden_address(address):
                raise PrivateAddress(host, address)
    return addresses


def _pinned(parts: SplitResult, address: str, port: int) -> str:
    """The URL with its host replaced by ``address`` (bracketed when IPv6)."""
    host = f"[{address}]" if ":" in address else address
    path = parts.path or "/"
    return f"{parts.scheme}://{host}:{port}{path}" + (f"?{parts.query}" if parts.query else "")


async def _target(url: str, *, allow_private: bool,
                  what: str) -> tuple[str, dict[str, str], dict[str, str]]:
    """Check one hop: the pinned URL, its ``Host`` header and the request extensions."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchError(f"{what}: only http(s) URLs with a host can be fetched")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise FetchError(f"{what}: the URL's port is not a number in 0..65535") from exc
    try:
        addresses = await resolve_checked(parts.hostname, port, allow_private=allow_private)
    except PrivateAddress as exc:
        raise FetchError(
            f"{what}: {parts.hostname} is a private or local address; refused") from exc
    except (socket.gaierror, UnicodeError) as exc:
        raise FetchError(f"{what}: cannot resolve {parts.hostname}") from exc
    host_header = parts.netloc.rsplit("@", 1)[-1]
    extensions = {"sni_hostname": parts.hostname} if parts.scheme == "https" else {}
    return _pinned(parts, addresses[0], port), {"Host": host_header}, extensions


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
                    pinned, headers, extensions = await _target(
                        url, allow_private=allow_private, what=what)
                    request = client.build_request("GET", pinned, headers=headers,
                                                   extensions=extensions)
                    response = await client.send(request, stream=True)
                    try:
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
                    finally:
                        await response.aclose()
                raise FetchError(f"{what}: more than {max_redirects} redirects")
    except TimeoutError as exc:
        raise FetchError(f"{what}: no answer within {timeout_s:.0f} s") from exc
    except httpx.HTTPError as exc:
        raise FetchError(f"{what}: {type(exc).__name__}") from exc
