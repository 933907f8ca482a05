"""Hostile input over every endpoint: whatever arrives, the answer is the seed's envelope with a
code from the seed's table, never a 500."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudrec.api import create_app
from tests.helpers import APPID, HEADERS, SEED_START_MIXED, make_settings, source_body

SEED_CODES = {0, 1000, 1001, 1002, 2101, 2103, 2104, 2105, 4001, 4004, 4005, 4006, 4007, 4009,
              4011, 4012, 4013, 4014, 4015, 4016, 4017, 4018, 4019}

junk = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: (st.lists(inner, max_size=4)
                   | st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=12,
)

VALID = {
    "startrecord": source_body("r" * 20, "room1", "u1"),
    "startrecord-mixed": SEED_START_MIXED,
    "stoprecord": {"resid": "r" * 20, "appid": APPID, "roomid": "room1", "recordid": "abc"},
    "updatemixrecord": {"resid": "r" * 20, "appid": APPID, "roomid": "room1", "recordid": "abc",
                        "mixconfig": SEED_START_MIXED["mixconfig"]},
    "applyrecord": {},
}


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += paths(v, prefix + (i,))
    return out


def replaced(body: Any, path: tuple[Any, ...], value: Any) -> Any:
    body = json.loads(json.dumps(body))
    target = body
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return body


bodies = st.one_of(
    st.sampled_from(sorted(VALID)).flatmap(
        lambda name: st.tuples(
            st.just(name), st.sampled_from(paths(VALID[name]) or [("x",)]), junk
        ).map(lambda t: (t[0].split("-")[0],
                         json.dumps(replaced(VALID[t[0]], t[1], t[2])).encode()))
    ),
    st.tuples(st.sampled_from(sorted({n.split("-")[0] for n in VALID})),
              junk.map(lambda v: json.dumps(v).encode())),
    st.tuples(st.sampled_from(["startrecord", "stoprecord"]), st.binary(max_size=64)),
)


def check(response: httpx.Response) -> None:
    assert response.status_code != 500, response.text
    data = response.json()
    assert data["code"] in SEED_CODES, data
    assert isinstance(data["message"], str) and data["message"]
    assert "traceId" in data


def test_fuzz_every_endpoint(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path, write_rate_per_s=10**9, query_rate_per_s=10**9))
    transport = httpx.ASGITransport(app=app)
    loop = asyncio.new_event_loop()
    client = httpx.AsyncClient(transport=transport, base_url="http://cloudrec")
    base = f"/app/{APPID}/v1/recordoss"

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(bodies)
    def post(case: tuple[str, bytes]) -> None:
        endpoint, body = case
        post = client.post(f"{base}/{endpoint}", content=body, headers=HEADERS)
        check(loop.run_until_complete(post))

    @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.text(min_size=1, max_size=30), st.text(min_size=1, max_size=60),
           st.dictionaries(st.sampled_from(["AppID", "Token", "Authorization"]),
                           st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126),
                                   max_size=30)))
    def query(roomid: str, recordid: str, headers: dict[str, str]) -> None:
        url = f"{base}/queryrecord/{quote(roomid, safe='')}/{quote(recordid, safe='')}"
        check(loop.run_until_complete(client.get(url, headers=headers or HEADERS)))

    try:
        post()
        query()
    finally:
        loop.run_until_complete(client.aclose())
        loop.close()


# -- path parameters ----------------------------------------------------------------------------

# Characters that str.isdigit() accepts but int() does not (superscripts, circled digits), and
# decimal digits of other scripts, which int() reads: the appid in a path is ASCII digits only.
UNICODE_DIGITS = ["²", "¹⁰⁰³⁴", "①", "१००३४", "١٠٠٣٤", "１００３４", "𝟏𝟎𝟎𝟑𝟒", "10034²", "߁"]
segments = st.one_of(
    st.sampled_from(UNICODE_DIGITS),
    st.text(min_size=1, max_size=24),
    st.text(alphabet=st.characters(categories=["Nd", "No", "Nl"]), min_size=1, max_size=8),
)
WRITES = ["applyrecord", "startrecord", "stoprecord", "updatemixrecord"]


def path_client(tmp_path: Path) -> tuple[asyncio.AbstractEventLoop, httpx.AsyncClient]:
    app = create_app(make_settings(tmp_path, write_rate_per_s=10**9, query_rate_per_s=10**9))
    # a crash answers 500 here instead of raising out of the client
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    client = httpx.AsyncClient(transport=transport, base_url="http://cloudrec")
    return asyncio.new_event_loop(), client


def check_whip(response: httpx.Response) -> None:
    assert 400 <= response.status_code < 500, (response.status_code, response.text)


async def every_route(client: httpx.AsyncClient, appid: str, room: str, other: str) -> None:
    """Each path parameter of every route, with this value: recordoss answers a seed code,
    WHIP a 4xx."""
    a, r, o = (quote(v, safe="") for v in (appid, room, other))
    for endpoint in WRITES:
        check(await client.post(f"/app/{a}/v1/recordoss/{endpoint}", content=b"{}",
                                headers=HEADERS))
    check(await client.get(f"/app/{a}/v1/recordoss/queryrecord/{r}/{o}", headers=HEADERS))
    check(await client.get(f"/app/{APPID}/v1/recordoss/queryrecord/{r}/{o}", headers=HEADERS))
    whip = {"Content-Type": "application/sdp", "Authorization": "Bearer x.y.z"}
    check_whip(await client.post(f"/whip/{a}/{r}/{o}", content=b"v=0\r\n", headers=whip))
    check_whip(await client.post(f"/whip/{APPID}/{r}/{o}", content=b"v=0\r\n", headers=whip))
    check_whip(await client.delete(f"/whip/session/{o}"))
    check_whip(await client.patch(f"/whip/session/{o}"))


@pytest.mark.parametrize("appid", UNICODE_DIGITS)
def test_unicode_digits_in_the_path(tmp_path: Path, appid: str) -> None:
    """'²'.isdigit() is True but int('²') raises: once a 500 on the API and on WHIP."""
    loop, client = path_client(tmp_path)
    try:
        loop.run_until_complete(every_route(client, appid, appid, appid))
    finally:
        loop.run_until_complete(client.aclose())
        loop.close()


@pytest.mark.parametrize("value", ["0/", "/", "a%2F", "x/y/"])
def test_a_slash_in_a_path_parameter(tmp_path: Path, value: str) -> None:
    """An encoded '/' in a segment arrives decoded, so the path ends with '/' or has one part
    more: no route matches. Once that was a 307 to the path without the slash (an empty body,
    no seed code); now the API answers 2101 and WHIP a 404, as for any unknown URI."""
    loop, client = path_client(tmp_path)
    try:
        loop.run_until_complete(every_route(client, str(APPID), value, value))
        loop.run_until_complete(every_route(client, value, "room", value))
    finally:
        loop.run_until_complete(client.aclose())
        loop.close()


def test_fuzz_path_segments(tmp_path: Path) -> None:
    loop, client = path_client(tmp_path)

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(segments, segments, segments)
    def fuzz(appid: str, room: str, other: str) -> None:
        loop.run_until_complete(every_route(client, appid, room, other))

    try:
        fuzz()
    finally:
        loop.run_until_complete(client.aclose())
        loop.close()
