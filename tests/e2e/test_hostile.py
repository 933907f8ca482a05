"""Concurrency and secrets: no double start, no lost stop, no secret in logs or answers."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from pathlib import Path

import pytest

from tests.e2e.test_recording import publish
from tests.helpers import (
    APPID,
    HEADERS,
    SECRET,
    make_settings,
    running_server,
    source_body,
    startrecord,
)


async def test_concurrent_starts_and_stops(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, write_rate_per_s=1000, query_rate_per_s=1000)
    async with running_server(settings) as server:
        pub = await publish(server, "room1", "alice")
        try:
            resid = await server.apply()
            body = source_body(resid, "room1", "alice")
            for _ in range(50):  # wait for the publication to be announced
                if server.app.state.hub.is_publishing(APPID, "room1"):
                    break
                await asyncio.sleep(0.1)
            answers = await asyncio.gather(*(server.call("startrecord", body) for _ in range(8)))
            codes = sorted(a["code"] for a in answers)
            assert codes == [0] + [4011] * 7, codes
            recordid = next(a["recordid"] for a in answers if a["code"] == 0)
            await asyncio.sleep(1.5)
            stop = {"resid": resid, "appid": APPID, "roomid": "room1", "recordid": recordid}
            stops = await asyncio.gather(*(server.call("stoprecord", stop) for _ in range(5)))
            assert {s["code"] for s in stops} <= {0, 4013} and stops[0]["code"] == 0
            query = await server.call(f"queryrecord/room1/{recordid}")
            assert query["code"] == 4013 and query["data"]["status"] == 4
            assert server.app.state.service.recordings == {}
        finally:
            await pub.stop()


async def test_no_secret_in_logs_or_answers(tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    storage_secret = "STORAGE-SECRET-7f3a9"
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="cloudrec")
    settings = make_settings(tmp_path, write_rate_per_s=1000, query_rate_per_s=1000)
    answers = []
    async with running_server(settings) as server:
        pub = await publish(server, "room2", "bob")
        try:
            body = source_body(await server.apply(), "room2", "bob")
            body["storagecfg"] = dict(body["storagecfg"], secretkey=storage_secret,
                                      accesskey="ACCESS-KEY-551")
            answers.append(await server.call("startrecord", dict(body, recordtype=9)))
            bad_token = {"AppID": str(APPID), "Token": base64.b64encode(b"demo-key:guess").decode()}
            answers.append(await server.call("applyrecord", {}, headers=bad_token))
            answer = await startrecord(server.call, body)
            answers.append(answer)
            recordid = answer["recordid"]
            await asyncio.sleep(1.0)
            answers.append(await server.call(f"queryrecord/room2/{recordid}"))
            answers.append(await server.call("stoprecord", {
                "resid": body["resid"], "appid": APPID, "roomid": "room2", "recordid": recordid}))
            answers.append(await server.call(f"queryrecord/room2/{recordid}"))
        finally:
            await pub.stop()
    text = caplog.text + json.dumps(answers)
    assert answers[2]["code"] == 0 and answers[-1]["code"] == 4013
    for secret in (storage_secret, "ACCESS-KEY-551", SECRET, HEADERS["Token"]):
        assert secret not in text, f"{secret} leaked"
