"""The SSRF guard and limits of picture fetching, against a real HTTP server on loopback."""

from __future__ import annotations

import asyncio
import socket
from typing import Any, AsyncIterator

import pytest
import uvicorn

from cloudrec.fetch import FetchError, fetch_bytes
from tests.helpers import free_port

SEEN: list[tuple[str, str]] = []  # (path, Host header) of every request the server answered


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    path = scope["path"]
    SEEN.append((path, dict(scope["headers"]).get(b"host", b"").decode()))
    if path == "/big":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x" * 2048})
    elif path == "/loop":
        await send({"type": "http.response.start", "status": 302,
                    "headers": [(b"location", b"/loop")]})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/slow":
        await asyncio.sleep(5)
    else:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"PNGDATA"})


@pytest.fixture
async def base() -> AsyncIterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                          lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task


@pytest.mark.parametrize("url", ["http://127.0.0.1/x", "http://10.1.2.3/x", "http://[::1]/x",
                                 "http://169.254.169.254/latest/meta-data", "http://192.168.0.1/",
                                 "http://localhost:1/x", "http://0.0.0.0/"])
async def test_private_addresses_refused(url: str) -> None:
    with pytest.raises(FetchError) as err:
        await fetch_bytes(url, what="mixconfig.output.patchUrl")
    assert err.value.code == 4016
    assert "patchUrl" in err.value.message and "private or local" in err.value.message


@pytest.mark.parametrize("url", ["ftp://example.com/a.png", "file:///etc/passwd", "http:///nohost"])
async def test_only_http_urls(url: str) -> None:
    with pytest.raises(FetchError, match="only http"):
        await fetch_bytes(url)


async def test_fetch_when_loopback_allowed(base: str) -> None:
    assert await fetch_bytes(f"{base}/pic.png", allow_private=True) == b"PNGDATA"
    with pytest.raises(FetchError, match="larger than"):
        await fetch_bytes(f"{base}/big", allow_private=True, max_bytes=1024)
    with pytest.raises(FetchError, match="redirects"):
        await fetch_bytes(f"{base}/loop", allow_private=True)
    with pytest.raises(FetchError, match="no answer within"):
        await fetch_bytes(f"{base}/slow", allow_private=True, timeout_s=0.3)
    with pytest.raises(FetchError, match="HTTP 404|private"):
        await fetch_bytes(f"{base}/pic.png")  # loopback is refused without the setting


# -- DNS rebinding ------------------------------------------------------------------------------

PUBLIC = "93.184.215.14"  # a public address; nothing answers it from the test machine


@pytest.fixture
def rebinding_dns(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A name server for ``*.test`` whose answers change: ``rebind.test`` is public the first
    time it is asked and loopback from then on; ``pics.test`` is always loopback. Every name
    asked is logged."""
    real = socket.getaddrinfo
    asked: list[str] = []

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if not isinstance(name, str) or not name.endswith(".test"):
            return real(host, port, *args, **kwargs)
        asked.append(name)
        first = name == "rebind.test" and asked.count(name) == 1
        address = PUBLIC if first else "127.0.0.1"
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "",
                 (address, int(port or 0)))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


async def test_the_connection_goes_to_the_checked_address(base: str,
                                                          rebinding_dns: list[str]) -> None:
    """The check saw a public address; a second lookup would give loopback. The fetch must
    connect where the check looked, so the local server is never reached."""
    port = base.rsplit(":", 1)[1]
    hits_before = len(SEEN)
    with pytest.raises(FetchError):
        await fetch_bytes(f"http://rebind.test:{port}/pic.png", what="patchUrl", timeout_s=1.0)
    assert len(SEEN) == hits_before, "the fetch reached the loopback server after the check"
    assert rebinding_dns.count("rebind.test") == 1, "one lookup per hop"


async def test_a_pinned_fetch_keeps_the_host_name(base: str, rebinding_dns: list[str]) -> None:
    port = base.rsplit(":", 1)[1]
    assert await fetch_bytes(f"http://pics.test:{port}/pic.png", allow_private=True) == b"PNGDATA"
    assert SEEN[-1] == ("/pic.png", f"pics.test:{port}")
    with pytest.raises(FetchError, match="private or local"):
        await fetch_bytes(f"http://pics.test:{port}/pic.png")
