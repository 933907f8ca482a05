"""The SSRF guard and limits of picture fetching, against a real HTTP server on loopback."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

import pytest
import uvicorn

from cloudrec.fetch import FetchError, fetch_bytes
from tests.helpers import free_port


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    path = scope["path"]
    if path == "/big":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x" * 2048})
    elif path == "/loop":
        await send({"type": "http.response.start", "status": 302, "headers": [(b"location", b"/loop")]})
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
