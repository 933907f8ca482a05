"""The recordoss control plane over real HTTP: envelope, auth, rate limits, validation, resids."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from cloudrec.api.trace import new_trace_id
from tests.helpers import (
    APPID,
    HEADERS,
    LOCAL_STORAGE,
    SEED_START_MIXED,
    Server,
    make_settings,
    running_server,
    source_body,
)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    settings = make_settings(tmp_path, write_rate_per_s=1000, query_rate_per_s=1000)
    async with running_server(settings) as s:
        yield s


async def test_apply_gives_resid_and_echoes_trace_id(server: Server) -> None:
    r = await server.client.post(server.api("applyrecord") + "?traceId=23116613407505472693518435",
                                 json={}, headers=HEADERS)
    data = r.json()
    assert r.status_code == 200
    assert data["code"] == 0 and data["message"] == "success"
    assert data["traceId"] == "23116613407505472693518435"
    assert len(data["resid"]) >= 64
    other = await server.apply()
    assert other != data["resid"]


async def test_generated_trace_id_has_seed_format(server: Server) -> None:
    data = await server.call("applyrecord", {})
    assert data["traceId"].isdigit() and len(data["traceId"]) > 20
    assert new_trace_id() != new_trace_id()


@pytest.mark.parametrize(
    "headers, code, status",
    [
        ({"Token": HEADERS["Token"]}, 1002, 401),  # no AppID
        ({"AppID": "99999", "Token": HEADERS["Token"]}, 1002, 401),  # not a configured app
        ({"AppID": "10035", "Token": HEADERS["Token"]}, 1001, 401),  # differs from the path
        ({"AppID": str(APPID)}, 1000, 401),  # no token
        ({"AppID": str(APPID), "Token": base64.b64encode(b"demo-key:wrong").decode()}, 1001, 401),
        ({"AppID": str(APPID), "Token": "not base64 !!"}, 1001, 401),
    ],
)
async def test_auth_errors(server: Server, headers: dict[str, str], code: int, status: int) -> None:
    data = await server.call("applyrecord", {}, headers=headers)
    assert (data["code"], data["_status"]) == (code, status)
    assert data["message"] != "success" and "traceId" in data


@pytest.mark.parametrize("form", ["Token: Basic", "Token", "Authorization"])
async def test_token_forms_accepted(server: Server, form: str) -> None:
    token = HEADERS["Token"]
    headers = {
        "Token: Basic": {"AppID": str(APPID), "Token": f"Basic {token}"},
        "Token": {"AppID": str(APPID), "Token": token},
        "Authorization": {"AppID": str(APPID), "Authorization": f"Basic {token}"},
    }[form]
    assert (await server.call("applyrecord", {}, headers=headers))["code"] == 0


async def test_rate_limit_per_appid(tmp_path: Path) -> None:
    async with running_server(make_settings(tmp_path)) as server:
        codes = [(await server.call("applyrecord", {}))["code"] for _ in range(12)]
        assert codes[:10] == [0] * 10
        assert codes[10:] == [2105, 2105]
        limited = await server.call("applyrecord", {})
        assert limited["_status"] == 429 and "per second" in limited["message"]
        # the limit is per write endpoint: stoprecord still answers, with its own validation
        assert (await server.call("stoprecord", {}))["code"] == 2101


async def test_query_rate_limit_per_recordid(tmp_path: Path) -> None:
    async with running_server(make_settings(tmp_path)) as server:
        codes = [(await server.call("queryrecord/room1/abc123"))["code"] for _ in range(11)]
        assert codes[:10] == [4013] * 10 and codes[10] == 2105
        assert (await server.call("queryrecord/room1/other456"))["code"] == 4013


async def test_auth_is_checked_before_rate_limit_and_validation(server: Server) -> None:
    data = await server.call("startrecord", {"junk": 1}, headers={"AppID": str(APPID)})
    assert data["code"] == 1000


@pytest.mark.parametrize(
    "change, field",
    [
        ({"recordtype": 3}, "recordtype"),
        ({"recordtype": "0"}, "recordtype"),
        ({"streamtype": 0}, "streamtype"),
        ({"uid": None}, "uid"),
        ({"appid": 10035}, "appid"),
        ({"roomid": "bad room/../x"}, "roomid"),
        ({"mixconfig": SEED_START_MIXED["mixconfig"]}, "mixconfig"),
        ({"storagecfg": None}, "storagecfg"),
        ({"storagecfg": {**LOCAL_STORAGE, "fileprefix": ["a-b"]}}, "storagecfg.fileprefix"),
        ({"storagecfg": {**LOCAL_STORAGE, "fileprefix": ["a" * 70, "b" * 70]}},
         "storagecfg.fileprefix"),
        ({"storagecfg": {**LOCAL_STORAGE, "vender": 7}}, "storagecfg.vender"),
        ({"callbackurl": "http://x/" + "a" * 260}, "callbackurl"),
    ],
)
async def test_source_start_validation(server: Server, change: dict[str, Any], field: str) -> None:
    body = source_body(await server.apply(), "room1", "u1")
    body.update(change)
    body = {k: v for k, v in body.items() if v is not None}
    data = await server.call("startrecord", body)
    assert (data["code"], data["_status"]) == (2101, 400), data
    assert field in data["message"]


@pytest.mark.parametrize(
    "path, value, field",
    [
        (("output", "videofps"), 0, "videofps"),
        (("output", "videobitrate"), 10001, "videobitrate"),
        (("output", "videogop"), 1000, "videogop"),
        (("output", "videoencode"), 101, "videoencode"),
        (("output", "audiosample"), 44100, "audiosample"),
        (("output", "base64seidata"), "not*base64", "base64seidata"),
        (("output", "base64seidata"), base64.b64encode(b"x" * 2049).decode(), "base64seidata"),
        (("output", "patch"), 4, "patch"),
        (("output", "background"), {"color": "aBcDeF"}, "color"),
        (("output", "watermark"), {"textList": [{"x": 0, "y": 0, "content": "hi", "size": 101}]},
         "size"),
        (("output", "patchUrl"), "ftp://example.com/a.png", "patchUrl"),
        (("input", 0, "zOrder"), 17, "zOrder"),
        (("input", 1, "layoutW"), 0, "layoutW"),
        (("input", 0, "alpha"), 1.5, "alpha"),
        (("input", 0, "crop"), 2, "crop"),
    ],
)
async def test_mixed_start_validation(server: Server, path: tuple[Any, ...], value: Any,
                                      field: str) -> None:
    body = json.loads(json.dumps(SEED_START_MIXED))
    body["resid"] = await server.apply()
    target = body["mixconfig"]
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    data = await server.call("startrecord", body)
    assert data["code"] == 2101, data
    assert field in data["message"]


async def test_templateid_only_for_one_room(server: Server) -> None:
    body = json.loads(json.dumps(SEED_START_MIXED))
    body["resid"] = await server.apply()
    body["mixconfig"]["templateid"] = 6
    del body["mixconfig"]["input"]
    data = await server.call("startrecord", body)
    assert data["code"] == 2101 and "templateid" in data["message"]


async def test_seed_example_passes_validation(server: Server) -> None:
    """The seed's mixed example is valid; its room does not publish, so the answer is 4005."""
    body = dict(SEED_START_MIXED, resid=await server.apply())
    data = await server.call("startrecord", body)
    assert data["code"] == 4005, data
    intput = json.loads(json.dumps(body))
    intput["mixconfig"]["intput"] = intput["mixconfig"].pop("input")
    assert (await server.call("startrecord", intput))["code"] == 4005


async def test_invalid_json_and_huge_body(server: Server) -> None:
    r = await server.client.post(server.api("startrecord"), content=b"{not json", headers=HEADERS)
    assert r.json()["code"] == 2101 and r.status_code == 400
    r = await server.client.post(server.api("startrecord"), content=b"[" * 70000, headers=HEADERS)
    assert r.json()["code"] == 2101


async def test_resid_errors(server: Server) -> None:
    unknown = await server.call("startrecord",
                                source_body("f" * 60 + "-" + "0" * 16, "room1", "u1"))
    assert (unknown["code"], unknown["_status"]) == (4012, 404)
    other_app = await server.call(
        "startrecord", source_body(await server.apply(), "room1", "u1"),
    )
    assert other_app["code"] == 4005  # valid resid, but nobody publishes


async def test_resid_expires(tmp_path: Path) -> None:
    async with running_server(make_settings(tmp_path, resid_ttl_s=0.05)) as server:
        resid = await server.apply()
        import asyncio

        await asyncio.sleep(0.1)
        data = await server.call("startrecord", source_body(resid, "room1", "u1"))
        assert data["code"] == 4012 and "expired" in data["message"]


async def test_unknown_recordid(server: Server) -> None:
    resid = await server.apply()
    body = {"resid": resid, "appid": APPID, "roomid": "room1",
            "recordid": "ba1107310000565164da34f816f842da94d"}
    assert (await server.call("stoprecord", body))["code"] == 4013
    update = dict(body, mixconfig=SEED_START_MIXED["mixconfig"])
    assert (await server.call("updatemixrecord", update))["code"] == 4013
    query = await server.call("queryrecord/room1/ba1107310000565164da34f816f842da94d")
    assert (query["code"], query["_status"]) == (4013, 404)


async def test_unknown_endpoint_gets_envelope(server: Server) -> None:
    r = await server.client.post(f"{server.base}/app/{APPID}/v1/recordoss/nosuch", json={},
                                 headers=HEADERS)
    assert r.status_code == 404 and r.json()["code"] == 2101
