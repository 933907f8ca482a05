"""The callback outbox: events are written to the database first, then delivered with retries.

An event is a JSON object ``{"id", "type", "appid", "roomid", "recordid", "uid", "time",
"data"}`` POSTed to the task's ``callbackurl`` with ``X-Cloudrec-Signature``: the hex
HMAC-SHA256 of the exact body bytes with the app's secret. Delivery is at-least-once: an event
stays in the outbox until a receiver answers 2xx, is retried with exponential backoff and
jitter for ``retry_for_s``, and survives restarts. Receivers de-duplicate by ``id``.

Delivery runs in its own task with bounded concurrency and short timeouts, so a slow or dead
receiver never slows a recording or the API: ``emit`` is one INSERT.

The outbox is a table that several writers and several deliverers may share: a node's worker
processes (one SQLite file) or a cluster's nodes (PostgreSQL). A deliverer claims an event
before sending it by pushing its ``next_ms`` forward by ``lease_s`` with a conditional UPDATE
(compare-and-set on the ``next_ms`` and ``attempts`` it read), so two deliverers never send the
same event at the same time. A delivered event is deleted; a failed one gets its backoff
written over the lease; one whose deliverer died becomes due again when the lease runs out, so
delivery stays at-least-once. An attempt is cut off at half the lease, so a live deliverer
never loses its lease mid-send.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import json
import logging
import random
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import httpx

from cloudrec.db import Database, Migration, now_ms, open_database

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Cloudrec-Signature"

# Never edit a released step: append one. Step 1 is the schema from before migrations, in
# IF NOT EXISTS form, so outbox files made then are adopted with their events.
MIGRATIONS: list[Migration] = [
    {
        "sqlite": """
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
""",
        "postgresql": """
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    appid BIGINT NOT NULL,
    url TEXT NOT NULL,
    body BYTEA NOT NULL,
    created_ms BIGINT NOT NULL,
    next_ms BIGINT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS events_next ON events(next_ms);
""",
    },
    # Step 2, for operators (the console): each event's recording, and the outcome of events
    # that left the outbox (delivered, given up, dropped), kept for LOG_KEEP_MS.
    """
ALTER TABLE events ADD COLUMN recordid TEXT;
CREATE INDEX IF NOT EXISTS events_record ON events(recordid);
CREATE TABLE IF NOT EXISTS event_log (
    id TEXT PRIMARY KEY,
    appid BIGINT NOT NULL,
    recordid TEXT,
    type TEXT,
    created_ms BIGINT NOT NULL,
    finished_ms BIGINT NOT NULL,
    attempts INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS event_log_record ON event_log(recordid);
CREATE INDEX IF NOT EXISTS event_log_finished ON event_log(finished_ms);
""",
]

LOG_KEEP_MS = 7 * 24 * 3600 * 1000  # how long the outcome of a finished event is kept


def sign(body: bytes, secret: str) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Event:
    id: str
    appid: int
    url: str
    body: bytes
    attempts: int
    lease_ms: int  # the next_ms this deliverer's claim wrote


class CallbackOutbox:
    """The outbox in a SQLite file, a PostgreSQL database (``postgresql://`` URL) or an open
    :class:`Database` (used, not closed). ``start`` runs this process's deliverer; any number
    of processes may emit into and deliver from one outbox."""

    STORE = "callbacks"

    def __init__(
        self,
        target: Path | str | Database,
        secret_for: Callable[[int], str | None],
        *,
        retry_for_s: float = 3600.0,
        timeout_s: float = 5.0,
        concurrency: int = 4,
        backoff_s: float = 1.0,
        max_backoff_s: float = 300.0,
        lease_s: float | None = None,
        poll_s: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.secret_for = secret_for
        self.retry_for_ms = int(retry_for_s * 1000)
        self.timeout_s = timeout_s
        self.concurrency = concurrency
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        # Long enough for an attempt's connect, write and read timeouts with room to spare.
        self.lease_s = lease_s if lease_s is not None else max(30.0, 4 * timeout_s)
        # Events emitted elsewhere (another process or node) wake no one here: look this often.
        self.poll_s = poll_s
        self.delivered = 0
        self.dropped = 0
        self.failures = 0  # delivery attempts that failed (for /metrics)
        self._transport = transport
        self._owns_db = not isinstance(target, Database)
        self._db = open_database(target)
        self._db.migrate(self.STORE, MIGRATIONS)
        self._wake = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._in_flight: set[str] = set()
        self._deliveries: set[asyncio.Task[None]] = set()
        self._pruned_ms = 0

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
        self._db.execute(
            "INSERT INTO events (id, appid, url, body, created_ms, next_ms, recordid) "
            "VALUES (?,?,?,?,?,?,?)",
            (event_id, appid, url, body, now, now, recordid),
        )
        self._wake.set()
        return event_id

    def pending(self) -> int:
        """Events not yet delivered (or given up), whoever emitted them."""
        row = self._db.fetchone("SELECT COUNT(*) AS n FROM events")
        assert row is not None
        return int(row["n"])

    # -- delivering -----------------------------------------------------------------------------

    def start(self) -> None:
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            await asyncio.wait([runner])  # a cancellation of close() itself still propagates
        # Deliveries still sending end with the runner's HTTP client; the events they held
        # stay leased and are sent again after the lease (at-least-once).
        for task in list(self._deliveries):
            task.cancel()
        await asyncio.gather(*self._deliveries, return_exceptions=True)
        if self._owns_db:
            self._db.close()

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=self.concurrency * 2)
        async with httpx.AsyncClient(
            timeout=self.timeout_s, limits=limits, transport=self._transport, follow_redirects=False
        ) as client:
            while True:
                self._wake.clear()
                try:
                    # Claim no more than there are free slots: a claimed event waiting for a
                    # slot would spend its lease waiting.
                    for event in self._claim(self.concurrency - len(self._in_flight)):
                        self._in_flight.add(event.id)
                        task = asyncio.create_task(self._deliver(client, event))
                        self._deliveries.add(task)
                        task.add_done_callback(self._deliveries.discard)
                        task.add_done_callback(functools.partial(self._delivered, event.id))
                    sleep_s = self._sleep_s()
                except Exception:  # the store is unreachable or full: delivery waits, never dies
                    log.exception("callback outbox: reading the outbox failed; retrying")
                    sleep_s = self.poll_s
                # asyncio.timeout, not wait_for: Python 3.11's wait_for returns a wake-up that
                # completes as close() cancels the loop, and loses the cancellation
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(sleep_s):
                        await self._wake.wait()

    def _delivered(self, event_id: str, _task: asyncio.Task[None]) -> None:
        self._done(event_id)

    def _done(self, event_id: str) -> None:
        self._in_flight.discard(event_id)
        self._wake.set()

    def _claim(self, limit: int) -> list[Event]:
        """Lease up to ``limit`` due events to this deliverer, oldest first."""
        if limit <= 0:
            return []
        now = now_ms()
        rows = self._db.fetchall(
            "SELECT id, appid, url, body, attempts, next_ms FROM events WHERE next_ms <= ? "
            "ORDER BY created_ms LIMIT ?",
            (now, limit),
        )
        lease = now + int(self.lease_s * 1000)
        claimed = []
        for row in rows:
            won = self._db.execute(
                "UPDATE events SET next_ms = ? WHERE id = ? AND next_ms = ? AND attempts = ?",
                (lease, row["id"], row["next_ms"], row["attempts"]),
            )
            if won == 1:
                claimed.append(Event(row["id"], row["appid"], row["url"], bytes(row["body"]),
                                     row["attempts"], lease))
        return claimed

    def _sleep_s(self) -> float:
        if len(self._in_flight) >= self.concurrency:
            return self.poll_s  # a finishing delivery wakes the loop
        row = self._db.fetchone("SELECT MIN(next_ms) AS next_ms FROM events")
        if row is None or row["next_ms"] is None:
            return self.poll_s
        return min(self.poll_s, max(0.05, (row["next_ms"] - now_ms()) / 1000))

    async def _deliver(self, client: httpx.AsyncClient, event: Event) -> None:
        secret = self.secret_for(event.appid)
        if secret is None:
            self._finish(event, "dropped", f"app {event.appid} is no longer configured")
            self.dropped += 1
            log.warning("callback %s dropped: app %d is no longer configured", event.id,
                        event.appid)
            return
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(event.body, secret)}
        try:
            response = await asyncio.wait_for(
                client.post(event.url, content=event.body, headers=headers), self.lease_s / 2
            )
            error = None if 200 <= response.status_code < 300 else f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}"
        except TimeoutError:
            error = "attempt timed out"
        try:
            if error is None:
                self._finish(event, "delivered")
                self.delivered += 1
                return
            self._retry(event, error)
        except Exception:
            # The outcome could not be written (a full disk, a lost database): the lease runs
            # out and the event is sent again; receivers de-duplicate by id.
            log.exception("callback %s: recording its delivery failed", event.id)

    def _finish(self, event: Event, outcome: str, error: str | None = None,
                attempts: int | None = None) -> None:
        self._db.execute("DELETE FROM events WHERE id = ?", (event.id,))
        self._log(event, outcome, error, event.attempts + 1 if attempts is None else attempts)

    def _log(self, event: Event, outcome: str, error: str | None, attempts: int) -> None:
        """Note how an event left the outbox, for :meth:`events_for`. Two deliverers that
        both sent an event (a lease ran out) note it once."""
        try:
            meta = json.loads(event.body)
        except ValueError:
            meta = {}
        now = now_ms()
        self._db.execute(
            "INSERT INTO event_log (id, appid, recordid, type, created_ms, finished_ms, attempts,"
            " outcome, last_error) VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT (id) DO NOTHING",
            (event.id, event.appid, meta.get("recordid"), meta.get("type"),
             int(meta.get("time") or now), now, attempts, outcome, error))
        if now - self._pruned_ms > 3600 * 1000:
            self._pruned_ms = now
            self._db.execute("DELETE FROM event_log WHERE finished_ms < ?", (now - LOG_KEEP_MS,))

    def events_for(self, recordid: str, limit: int = 200) -> list[dict[str, Any]]:
        """A recording's events, oldest first, with their delivery state: ``pending`` (not
        delivered yet: ``attempts`` so far, ``last_error``, ``next_ms`` the next attempt),
        ``delivered``, ``given up`` (after ``retry_for_s``) or ``dropped`` (its app is gone).
        Events emitted before the outbox knew their recording are not listed."""
        out: list[dict[str, Any]] = []
        for row in self._db.fetchall(
                "SELECT id, body, created_ms, next_ms, attempts, last_error FROM events "
                "WHERE recordid = ? ORDER BY created_ms LIMIT ?", (recordid, limit)):
            try:
                event_type = json.loads(bytes(row["body"])).get("type")
            except ValueError:
                event_type = None
            out.append({"id": row["id"], "type": event_type, "state": "pending",
                        "created_ms": row["created_ms"], "attempts": row["attempts"],
                        "last_error": row["last_error"], "next_ms": row["next_ms"],
                        "finished_ms": None})
        for row in self._db.fetchall(
                "SELECT id, type, created_ms, finished_ms, attempts, outcome, last_error "
                "FROM event_log WHERE recordid = ? ORDER BY created_ms LIMIT ?",
                (recordid, limit)):
            out.append({"id": row["id"], "type": row["type"], "state": row["outcome"],
                        "created_ms": row["created_ms"], "attempts": row["attempts"],
                        "last_error": row["last_error"], "next_ms": None,
                        "finished_ms": row["finished_ms"]})
        out.sort(key=lambda e: (e["created_ms"], e["id"]))
        return out[-limit:]

    def _retry(self, event: Event, error: str) -> None:
        self.failures += 1
        attempts = event.attempts + 1
        delay = (min(self.max_backoff_s, self.backoff_s * 2 ** (attempts - 1))
                 * random.uniform(0.8, 1.2))
        now = now_ms()
        row = self._db.fetchone("SELECT created_ms FROM events WHERE id = ?", (event.id,))
        if row is None:
            return
        # Conditional on our lease: a deliverer that took the event over after it ran out
        # owns its schedule now.
        if now - row["created_ms"] > self.retry_for_ms:
            if self._db.execute("DELETE FROM events WHERE id = ? AND next_ms = ?",
                                (event.id, event.lease_ms)):
                self._log(event, "given up", error, attempts)
                self.dropped += 1
                log.warning("callback %s to %s given up after %d attempts (%s)",
                            event.id, event.url, attempts, error)
            return
        self._db.execute(
            "UPDATE events SET attempts = ?, next_ms = ?, last_error = ? "
            "WHERE id = ? AND next_ms = ?",
            (attempts, now + int(delay * 1000), error, event.id, event.lease_ms),
        )
        log.info("callback %s to %s failed (%s); retry %d in %.1f s", event.id, event.url, error,
                 attempts, delay)
        self._wake.set()
