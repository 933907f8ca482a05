"""A small client of the Janus HTTP API (the REST transport, Janus 1.x): a session, plugin
handles, synchronous plugin requests, asynchronous messages and the session's long-polled
events.

Janus answers every request with ``{"janus": "success" | "ack" | "error", ...}``; a plugin's
own refusal comes back as ``success`` with ``error_code``/``error`` in its data. Both raise
:class:`JanusError` here. Events (a plugin's asynchronous answers, a JSEP) come from
``GET /janus/{session}?maxev=N``, which Janus holds up to 30 s when there is none.
"""

from __future__ import annotations

import secrets
from typing import Any

import httpx

__all__ = ["JanusApi", "JanusError"]

TIMEOUT_S = 10.0
POLL_S = 30.0  # Janus holds a long poll this long at most


class JanusError(ConnectionError):
    """Janus refused a request (its reason), or answered what is not its API."""


def _tx() -> str:
    return secrets.token_hex(6)


class JanusApi:
    """One Janus session over HTTP: ``await create()``, then handles and requests."""

    def __init__(self, base: str, http: httpx.AsyncClient | None = None) -> None:
        self.base = base.rstrip("/")
        self.http = http or httpx.AsyncClient(timeout=TIMEOUT_S)
        self._own_http = http is None
        self.session: int | None = None

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        body = {**body, "transaction": _tx()}
        r = await self.http.post(self.base + path, json=body)
        try:
            answer = r.json()
        except ValueError:
            raise JanusError(f"Janus answered HTTP {r.status_code}, not JSON") from None
        if not isinstance(answer, dict):
            raise JanusError("Janus answered what is not a JSON object")
        if answer.get("janus") == "error":
            error = answer.get("error") or {}
            raise JanusError(f"Janus refused {body.get('janus')}: {error.get('reason')} "
                             f"({error.get('code')})")
        return answer

    async def create(self) -> int:
        answer = await self._post("", {"janus": "create"})
        self.session = int(answer["data"]["id"])
        return self.session

    async def attach(self, plugin: str) -> int:
        answer = await self._post(f"/{self.session}", {"janus": "attach", "plugin": plugin})
        return int(answer["data"]["id"])

    async def request(self, handle: int, body: dict[str, Any]) -> dict[str, Any]:
        """A synchronous plugin request: the plugin's data, or :class:`JanusError`."""
        answer = await self._post(f"/{self.session}/{handle}",
                                  {"janus": "message", "body": body})
        data = (answer.get("plugindata") or {}).get("data")
        if not isinstance(data, dict):
            raise JanusError(f"Janus gave no answer to {body.get('request')}")
        if data.get("error_code"):
            raise JanusError(f"Janus refused {body.get('request')}: {data.get('error')} "
                             f"({data['error_code']})")
        return data

    async def send(self, handle: int, body: dict[str, Any],
                   jsep: dict[str, Any] | None = None) -> None:
        """An asynchronous plugin message: its answer comes among the :meth:`events`."""
        message: dict[str, Any] = {"janus": "message", "body": body}
        if jsep is not None:
            message["jsep"] = jsep
        await self._post(f"/{self.session}/{handle}", message)

    async def events(self, maxev: int = 10) -> list[dict[str, Any]]:
        """The session's next events (a long poll: up to 30 s; an empty list then)."""
        r = await self.http.get(f"{self.base}/{self.session}",
                                params={"maxev": maxev, "rid": _tx()},
                                timeout=httpx.Timeout(TIMEOUT_S, read=POLL_S + 5))
        if r.status_code != 200:
            raise JanusError(f"Janus answered the long poll with HTTP {r.status_code}")
        answer = r.json()
        items = answer if isinstance(answer, list) else [answer]
        out = []
        for item in items:
            if not isinstance(item, dict) or item.get("janus") == "keepalive":
                continue
            if item.get("janus") == "error":
                raise JanusError(f"Janus: {(item.get('error') or {}).get('reason')}")
            out.append(item)
        return out

    async def keepalive(self) -> None:
        await self._post(f"/{self.session}", {"janus": "keepalive"})

    async def close(self) -> None:
        """Destroy the session (its handles with it), as far as Janus can be reached."""
        try:
            if self.session is not None:
                await self._post(f"/{self.session}", {"janus": "destroy"})
        except (httpx.HTTPError, JanusError):
            pass
        finally:
            self.session = None
            if self._own_http:
                await self.http.aclose()
