"""A minimal Chrome DevTools Protocol client over one websocket (aiohttp's client).

Commands are ``await cdp.call(method, params, session=...)``; events go to the handlers
registered with :meth:`Cdp.on`. The connection closing (the browser died) fails every
pending call with :class:`CdpClosed` and sets :attr:`Cdp.closed`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Callable
from typing import Any

import aiohttp

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any], str | None], None]


class CdpClosed(ConnectionError):
    """The browser's DevTools connection is gone."""


class CdpError(RuntimeError):
    """A DevTools command answered an error."""


class Cdp:
    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._handlers: dict[str, list[Handler]] = {}
        self._reader: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()

    async def connect(self, url: str) -> None:
        self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(url, max_msg_size=256 * 1024 * 1024,
                                                  heartbeat=None)
        self._reader = asyncio.get_running_loop().create_task(self._read())

    def on(self, method: str, handler: Handler) -> None:
        self._handlers.setdefault(method, []).append(handler)

    async def call(self, method: str, params: dict[str, Any] | None = None, *,
                   session: str | None = None, timeout: float = 10.0) -> dict[str, Any]:
        if self._ws is None or self.closed.is_set():
            raise CdpClosed("the browser is gone")
        ident = next(self._ids)
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        try:
            await self._ws.send_str(json.dumps(message))
            return await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(ident, None)

    async def _read(self) -> None:
        assert self._ws is not None
        try:
            async for msg in self._ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                data = json.loads(msg.data)
                if "id" in data:
                    future = self._pending.get(data["id"])
                    if future is not None and not future.done():
                        if "error" in data:
                            future.set_exception(CdpError(data["error"].get("message", "")))
                        else:
                            future.set_result(data.get("result", {}))
                    continue
                for handler in self._handlers.get(data.get("method", ""), []):
                    try:
                        handler(data.get("params", {}), data.get("sessionId"))
                    except Exception:
                        log.exception("DevTools event handler %s", data.get("method"))
        except (aiohttp.ClientError, ConnectionError):
            pass
        finally:
            self.closed.set()
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(CdpClosed("the browser is gone"))

    async def close(self) -> None:
        self.closed.set()
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
        if self._session is not None:
            await self._session.close()
