"""Callbacks: signed, at-least-once from a durable outbox (SQLite and PostgreSQL), through a
receiver that fails at first; several deliverers on one outbox send each event once at a time."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import httpx
import pytest
import uvicorn

from cloudrec.callbacks import CallbackOutbox, sign
from tests.e2e.test_recording import playlist_of, publish, stop
from tests.helpers import (
    APPID,
    SECRET,
    free_port,
    make_settings,
    running_server,
    segments_in,
    source_body,
    startrecord,
    wait_for,
)


class Receiver:
    """A real HTTP receiver on loopback that answers 500 to the first ``failures`` attempts
    of every event, then 200, after ``delay_s``; it notes sends of an event that overlap."""

    def __init__(self, failures: int, delay_s: float = 0.0) -> None:
        self.failures = failures
        self.delay_s = delay_s
        self.attempts: dict[str, int] = {}
        self.accepted: list[tuple[dict[str, Any], bytes, str]] = []
        self.in_flight: set[str] = set()
        self.overlaps: list[str] = []  # events sent again while an earlier send was open

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        event = json.loads(body)
        n = self.attempts[event["id"]] = self.attempts.get(event["id"], 0) + 1
        if event["id"] in self.in_flight:
            self.overlaps.append(event["id"])
        self.in_flight.add(event["id"])
        await asyncio.sleep(self.delay_s)
        self.in_flight.discard(event["id"])
        status = 500 if n <= self.failures else 200
        if status == 200:
            self.accepted.append((event, body, headers.get("x-cloudrec-signature", "")))
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})


@asynccontextmanager
async def serving(app: Receiver) -> AsyncIterator[str]:
    """``app`` on uvicorn on a free loopback port: its hook URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                          lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}/hooks/cloudrec"
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    app = Receiver(failures=2)
    async with serving(app) as url:
        yield app, url


def verify(body: bytes, signature: str, secret: str) -> bool:
    """What a receiver does (the README shows the same)."""
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature)


async def test_events_delivered_signed_after_failures(tmp_path: Path,
                                                      receiver: tuple[Receiver, str]) -> None:
    rx, url = receiver
    settings = make_settings(tmp_path, segment_seconds=1.0, write_rate_per_s=100)
    async with running_server(settings) as server:
        server.app.state.outbox.backoff_s = 0.05
        pub = await publish(server, "room1", "alice")
        try:
            resid = await server.apply()
            started = await startrecord(server.call, source_body(resid, "room1", "alice",
                                                                  callbackurl=url))
            assert started["code"] == 0, started
            recordid = started["recordid"]
            playlist = playlist_of(server, "room1", recordid, "alice")
            await wait_for(lambda: len(segments_in(playlist)) >= 2, timeout=20,
                           what="two segments stored")
            await stop(server, "room1", resid, recordid)
        finally:
            await pub.stop()
        outbox = server.app.state.outbox
        await wait_for(lambda: outbox.pending() == 0, timeout=10, what="every event delivered")
    by_id = {event["id"]: (event, body, sig) for event, body, sig in rx.accepted}
    assert len(by_id) == len(rx.accepted), "each event accepted once"
    assert all(n == 3 for n in rx.attempts.values()), "two failures, then delivered"
    for event, body, sig in by_id.values():
        assert verify(body, sig, SECRET)
        assert (event["appid"], event["roomid"], event["recordid"], event["uid"]) == (
            APPID, "room1", recordid, "alice")
        assert isinstance(event["time"], int)
    types = [e["type"] for e, _, _ in sorted(by_id.values(), key=lambda x: x[0]["time"])]
    assert types[0] == "recording.started" and types.count("recording.stopped") == 1
    files = [e["data"] for e, _, _ in by_id.values() if e["type"] == "file.uploaded"]
    segments = [f for f in files if f["kind"] == "segment"]
    assert len(segments) >= 2 and all(f["file"].startswith("test1/test2/") for f in segments)
    assert [f for f in files if f["kind"] == "playlist" and f["final"]]
    stopped = next(e for e, _, _ in by_id.values() if e["type"] == "recording.stopped")
    assert stopped["data"]["reason"] == "api" and stopped["data"]["segments"] == len(segments)


async def test_outbox_survives_restart_and_gives_up_in_bounded_time(database: str) -> None:
    calls: list[bytes] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        calls.append(request.content)
        return httpx.Response(503)

    outbox = CallbackOutbox(database, {1: "s"}.get, transport=httpx.MockTransport(refuse),
                            backoff_s=0.01, retry_for_s=60)
    event_id = outbox.emit("http://receiver.invalid/x", "recording.started", appid=1, roomid="r",
                           recordid="rec")
    await outbox.close()  # "crash" before any delivery
    delivered: list[httpx.Request] = []

    def accept(request: httpx.Request) -> httpx.Response:
        delivered.append(request)
        return httpx.Response(204)

    again = CallbackOutbox(database, {1: "s"}.get, transport=httpx.MockTransport(accept))
    assert again.pending() == 1
    again.start()
    await wait_for(lambda: again.pending() == 0, timeout=15, interval=0.02)
    await again.close()
    assert len(delivered) == 1 and json.loads(delivered[0].content)["id"] == event_id
    assert delivered[0].headers["x-cloudrec-signature"] == sign(delivered[0].content, "s")

    dead = CallbackOutbox(database, {1: "s"}.get, transport=httpx.MockTransport(refuse),
                          backoff_s=0.01, retry_for_s=0.3)
    dead.emit("http://receiver.invalid/x", "recording.stopped", appid=1, roomid="r", recordid="rec")
    dead.start()
    await wait_for(lambda: dead.pending() == 0, timeout=20, interval=0.02)
    assert dead.pending() == 0 and dead.dropped == 1 and len(calls) >= 3
    await dead.close()


async def test_two_deliverers_send_each_event_once_at_a_time(database: str) -> None:
    """Two outboxes on one database (two worker processes of a node, or two nodes) both emit
    and both deliver: every event is sent until accepted, never twice at once, and accepted
    once."""
    rx = Receiver(failures=1, delay_s=0.02)  # so two sends of one event would overlap
    async with serving(rx) as url:
        outboxes = [CallbackOutbox(database, {1: "s"}.get, backoff_s=0.05, poll_s=0.02)
                    for _ in range(2)]
        ids = [outboxes[i % 2].emit(url, "file.uploaded", appid=1, roomid="r",
                                    recordid=f"rec{i}", data={"n": i}) for i in range(40)]
        # Each deliverer on its own thread and event loop, as in its own process: their
        # claims really race.
        done = threading.Event()

        def deliver(outbox: CallbackOutbox) -> None:
            async def run() -> None:
                outbox.start()
                while not done.is_set():
                    await asyncio.sleep(0.01)
                await outbox.close()

            asyncio.run(run())

        threads = [threading.Thread(target=deliver, args=(o,)) for o in outboxes]
        for t in threads:
            t.start()
        try:
            await wait_for(lambda: outboxes[0].pending() == 0, timeout=20)
        finally:
            done.set()
            await asyncio.to_thread(lambda: [t.join() for t in threads])
    accepted = [event["id"] for event, _, _ in rx.accepted]
    assert sorted(accepted) == sorted(ids), "each event accepted exactly once"
    assert all(rx.attempts[i] == 2 for i in ids), "one failure, then delivered: no extra sends"
    assert rx.overlaps == []
    assert sum(o.delivered for o in outboxes) == len(ids)
    for _event, body, sig in rx.accepted:
        assert verify(body, sig, "s")


async def test_delivery_outlives_a_store_that_cannot_be_written(tmp_path: Path) -> None:
    """While another process holds the SQLite file's write lock (the store refuses writes, as
    on a full disk) the deliverer cannot claim events; it keeps running, and once the store
    takes writes again the event is delivered and removed."""
    import sqlite3

    from cloudrec.db import Database

    path = tmp_path / "callbacks.sqlite3"
    delivered: list[str] = []

    def accept(request: httpx.Request) -> httpx.Response:
        delivered.append(json.loads(request.content)["id"])
        return httpx.Response(204)

    db = Database(path, busy_timeout_s=0.1)
    outbox = CallbackOutbox(db, {1: "s"}.get, transport=httpx.MockTransport(accept), poll_s=0.1)
    event_id = outbox.emit("http://receiver.invalid/x", "recording.started", appid=1,
                           roomid="r", recordid="rec")
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    outbox.start()
    try:
        await asyncio.sleep(1.0)
        assert not delivered
        assert outbox._runner is not None and not outbox._runner.done(), "delivery still runs"
        blocker.execute("COMMIT")
        await wait_for(lambda: outbox.pending() == 0, timeout=5)
        assert delivered == [event_id]
    finally:
        if blocker.in_transaction:
            blocker.execute("ROLLBACK")
        blocker.close()
        await outbox.close()
        db.close()


@pytest.mark.parametrize("turns", [0, 1, 2, 3])
async def test_close_ends_the_deliverer_even_as_it_wakes(tmp_path: Path, turns: int) -> None:
    """``close()`` cancels the delivery loop at the moment its wake-up completes (an event
    just given up or delivered wakes it). With ``asyncio.wait_for`` around the wait, Python
    3.11 returned the wake-up and lost the cancellation: the loop went on and ``close()``
    never returned (the outbox test hung in CI once in six runs)."""
    outbox = CallbackOutbox(str(tmp_path / "store.sqlite3"), {1: "s"}.get,
                            transport=httpx.MockTransport(lambda r: httpx.Response(204)))
    outbox.start()
    for _ in range(5):
        await asyncio.sleep(0)  # the loop now waits for its wake-up
    outbox._wake.set()
    for _ in range(turns):
        await asyncio.sleep(0)
    started = time.monotonic()
    async with asyncio.timeout(10):  # (a close() that swallows this ends too: timed below)
        await outbox.close()
    assert time.monotonic() - started < 1.0, "close() waited for a poll (5 s), or longer"
