"""The callback outbox: events are written to SQLite first, then delivered with retries.

An event is a JSON object ``{"id", "type", "appid", "roomid", "recordid", "uid", "time",
"data"}`` POSTed to the task's ``callbackurl`` with ``X-Cloudrec-Signature``: the hex
HMAC-SHA256 of the exact body bytes with the app's secret. Delivery is at-least-once: an event
stays in the outbox until a receiver answers 2xx, is retried with exponential backoff and
jitter for ``retry_for_s``, and survives restarts. Receivers de-duplicate by ``id``.

Delivery runs in its own task with bounded concurrency and short timeouts, so a slow or dead
receiver never slows a recording or the API: ``emit`` is one INSERT.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import httpx

from cloudrec.db import now_ms, open_db

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Cloudrec-Signature"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    appid INTEGER NOT NULL,
    url TEXT NOT NULL,
    body BLOB NOT NULL,
    created_ms INTEGER NOT NULL,
    next_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS events_next ON events(next_ms);
"""


def sign(body: bytes, secret: str) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Event:
    id: str
    appid: int
    url: str
    body: bytes
    attempts: int


class CallbackOutbox:
    def __init__(
        self,
        path: Path,
        secret_for: Callable[[int], str | None],
        *,
        retry_for_s: float = 3600.0,
        timeout_s: float = 5.0,
        concurrency: int = 4,
        backoff_s: float = 1.0,
        max_backoff_s: float = 300.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.secret_for = secret_for
        self.retry_for_ms = int(retry_for_s * 1000)
        self.timeout_s = timeout_s
        self.concurrency = concurrency
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.delivered = 0
        self.dropped = 0
        self._transport = transport
        self._lock = threading.Lock()
        self._db = open_db(path, _SCHEMA)
        self._wake = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._in_flight: set[str] = set()

    # -- producing ------------------------------------------------------------------------------

    def emit(
        self,
        url: str | None,
        event_type: str,
        *,
        appid: int,
        roomid: str,
        recordid: str,
        uid: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> str | None:
        """Queue one event for ``url`` (nothing when the task has no callbackurl)."""
        if not url:
            return None
        event_id = uuid.uuid4().hex
        now = now_ms()
        body = json.dumps(
            {
                "id": event_id,
                "type": event_type,
                "appid": appid,
                "roomid": roomid,
                "recordid": recordid,
                "uid": uid,
                "time": now,
                "data": data or {},
            },
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode()
        with self._lock:
            self._db.execute(
                "INSERT INTO events (id, appid, url, body, created_ms, next_ms) VALUES (?,?,?,?,?,?)",
                (event_id, appid, url, body, now, now),
            )
        self._wake.set()
        return event_id

    def pending(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    # -- delivering -----------------------------------------------------------------------------

    def start(self) -> None:
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            try:
                await self._runner
            except asyncio.CancelledError:
                pass
            self._runner = None
        with self._lock:
            self._db.close()

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=self.concurrency * 2)
        async with httpx.AsyncClient(
            timeout=self.timeout_s, limits=limits, transport=self._transport, follow_redirects=False
        ) as client:
            slots = asyncio.Semaphore(self.concurrency)
            while True:
                self._wake.clear()
                due = self._due(limit=self.concurrency * 4)
                for event in due:
                    await slots.acquire()
                    self._in_flight.add(event.id)
                    task = asyncio.create_task(self._deliver(client, event))
                    task.add_done_callback(lambda _t, eid=event.id: (slots.release(), self._in_flight.discard(eid)))
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=self._sleep_s())
                except TimeoutError:
                    pass

    def _due(self, limit: int) -> list[Event]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, appid, url, body, attempts FROM events WHERE next_ms <= ? "
                "ORDER BY created_ms LIMIT ?",
                (now_ms(), limit + len(self._in_flight)),
            ).fetchall()
        events = [Event(r[0], r[1], r[2], bytes(r[3]), r[4]) for r in rows if r[0] not in self._in_flight]
        return events[:limit]

    def _sleep_s(self) -> float:
        with self._lock:
            row = self._db.execute("SELECT MIN(next_ms) FROM events").fetchone()
        if row[0] is None:
            return 5.0
        return min(5.0, max(0.05, (row[0] - now_ms()) / 1000))

    async def _deliver(self, client: httpx.AsyncClient, event: Event) -> None:
        secret = self.secret_for(event.appid)
        if secret is None:
            self._finish(event.id)
            self.dropped += 1
            log.warning("callback %s dropped: app %d is no longer configured", event.id, event.appid)
            return
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(event.body, secret)}
        try:
            response = await client.post(event.url, content=event.body, headers=headers)
            error = None if 200 <= response.status_code < 300 else f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}"
        if error is None:
            self._finish(event.id)
            self.delivered += 1
            return
        self._retry(event, error)

    def _finish(self, event_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM events WHERE id = ?", (event_id,))

    def _retry(self, event: Event, error: str) -> None:
        attempts = event.attempts + 1
        delay = min(self.max_backoff_s, self.backoff_s * 2 ** (attempts - 1)) * random.uniform(0.8, 1.2)
        now = now_ms()
        with self._lock:
            created = self._db.execute(
                "SELECT created_ms FROM events WHERE id = ?", (event.id,)
            ).fetchone()
            if created is None:
                return
            if now - created[0] > self.retry_for_ms:
                self._db.execute("DELETE FROM events WHERE id = ?", (event.id,))
                self.dropped += 1
                log.warning("callback %s to %s given up after %d attempts (%s)",
                            event.id, event.url, attempts, error)
                return
            self._db.execute(
                "UPDATE events SET attempts = ?, next_ms = ?, last_error = ? WHERE id = ?",
                (attempts, now + int(delay * 1000), error, event.id),
            )
        log.info("callback %s to %s failed (%s); retry %d in %.1f s", event.id, event.url, error, attempts, delay)
        self._wake.set()
