"""Callbacks: signed, at-least-once from a durable outbox, through a receiver that fails at first."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any, AsyncIterator

import httpx
import pytest
import uvicorn

from cloudrec.callbacks import CallbackOutbox, sign
from tests.helpers import APPID, SECRET, free_port, make_settings, running_server, source_body, startrecord
from tests.test_recording import publish, stop


class Receiver:
    """A real HTTP receiver on loopback that answers 500 to the first ``failures`` attempts
    of every event, then 200."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.attempts: dict[str, int] = {}
        self.accepted: list[tuple[dict[str, Any], bytes, str]] = []

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
        status = 500 if n <= self.failures else 200
        if status == 200:
            self.accepted.append((event, body, headers.get("x-cloudrec-signature", "")))
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    app = Receiver(failures=2)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                          lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    yield app, f"http://127.0.0.1:{port}/hooks/cloudrec"
    server.should_exit = True
    await task


def verify(body: bytes, signature: str, secret: str) -> bool:
    """What a receiver does (the README shows the same)."""
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature)


async def test_events_delivered_signed_after_failures(tmp_path: Path, receiver: tuple[Receiver, str]) -> None:
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
            await asyncio.sleep(2.5)
            await stop(server, "room1", resid, recordid)
        finally:
            await pub.stop()
        outbox = server.app.state.outbox
        for _ in range(200):
            if outbox.pending() == 0:
                break
            await asyncio.sleep(0.05)
        assert outbox.pending() == 0
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


async def test_outbox_survives_restart_and_gives_up_in_bounded_time(tmp_path: Path) -> None:
    calls: list[bytes] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        calls.append(request.content)
        return httpx.Response(503)

    outbox = CallbackOutbox(tmp_path / "cb.db", {1: "s"}.get, transport=httpx.MockTransport(refuse),
                            backoff_s=0.01, retry_for_s=60)
    event_id = outbox.emit("http://receiver.invalid/x", "recording.started", appid=1, roomid="r",
                           recordid="rec")
    await outbox.close()  # "crash" before any delivery
    delivered: list[httpx.Request] = []

    def accept(request: httpx.Request) -> httpx.Response:
        delivered.append(request)
        return httpx.Response(204)

    again = CallbackOutbox(tmp_path / "cb.db", {1: "s"}.get, transport=httpx.MockTransport(accept))
    assert again.pending() == 1
    again.start()
    for _ in range(100):
        if again.pending() == 0:
            break
        await asyncio.sleep(0.02)
    await again.close()
    assert len(delivered) == 1 and json.loads(delivered[0].content)["id"] == event_id
    assert delivered[0].headers["x-cloudrec-signature"] == sign(delivered[0].content, "s")

    dead = CallbackOutbox(tmp_path / "dead.db", {1: "s"}.get, transport=httpx.MockTransport(refuse),
                          backoff_s=0.01, retry_for_s=0.3)
    dead.emit("http://receiver.invalid/x", "recording.stopped", appid=1, roomid="r", recordid="rec")
    dead.start()
    for _ in range(200):
        if dead.pending() == 0:
            break
        await asyncio.sleep(0.02)
    assert dead.pending() == 0 and dead.dropped == 1 and len(calls) >= 3
    await dead.close()
