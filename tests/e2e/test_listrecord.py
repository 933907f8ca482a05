"""``listrecord`` (beyond the seed): the app's tasks newest first, filtered by room and state,
in pages; the seed's auth, rate limit and envelope; 2101 naming a bad parameter."""

from __future__ import annotations

import asyncio
from pathlib import Path

from cloudrec.tasks import Status
from tests.helpers import APPID, HEADERS, LOCAL_STORAGE, make_settings, running_server


async def test_lists_pages_and_filters(tmp_path: Path) -> None:
    async with running_server(make_settings(tmp_path, write_rate_per_s=1000)) as srv:
        tasks = srv.app.state.front.tasks
        made = []
        for i, room in enumerate(["ra", "rb", "ra", "ra", "rb"]):
            resid = await srv.apply()
            task = tasks.create_task(appid=APPID, resid=resid, roomid=room, uid=f"u{i}",
                                     streamtype=2, recordtype=0,
                                     request={"storagecfg": LOCAL_STORAGE})
            made.append((task.recordid, resid, room))
            await asyncio.sleep(0.005)  # distinct createtimes
        tasks.set_status(made[0][0], Status.STOPPED, stopreason="api")

        everything = await srv.call("listrecord")
        assert everything["code"] == 0 and everything["_status"] == 200
        records = everything["data"]["records"]
        assert [r["recordid"] for r in records] == [m[0] for m in reversed(made)]
        assert everything["data"]["before"] is None
        newest = records[0]
        assert newest["resid"] == made[-1][1] and newest["roomid"] == "rb"
        assert newest["uid"] == "u4" and newest["status"] == 0 and "storagecfg" not in newest

        page1 = (await srv.call("listrecord?limit=2"))["data"]
        page2 = (await srv.call(f"listrecord?limit=2&before={page1['before']}"))["data"]
        page3 = (await srv.call(f"listrecord?limit=2&before={page2['before']}"))["data"]
        paged = [r["recordid"] for p in (page1, page2, page3) for r in p["records"]]
        assert paged == [m[0] for m in reversed(made)] and page3["before"] is None

        room_a = (await srv.call("listrecord?roomid=ra&state=active"))["data"]["records"]
        assert [r["recordid"] for r in room_a] == [made[3][0], made[2][0]]
        stopped = (await srv.call("listrecord?state=stopped"))["data"]["records"]
        assert [(r["recordid"], r["status"], r["stopreason"]) for r in stopped] == [
            (made[0][0], 4, "api")]

        other = {"AppID": "10035", "Token": "b3RoZXIta2V5Om90aGVyLXNlY3JldA=="}
        r = await srv.client.get(f"{srv.base}/app/10035/v1/recordoss/listrecord", headers=other)
        assert r.json()["code"] == 0 and r.json()["data"]["records"] == []

        assert (await srv.call("listrecord", headers={}))["code"] == 1002
        wrong = {**HEADERS, "Token": "d3Jvbmc6d3Jvbmc="}
        assert (await srv.call("listrecord", headers=wrong))["code"] == 1001
        for query, field in [("limit=0", "limit"), ("limit=1001", "limit"), ("limit=x", "limit"),
                             ("state=paused", "state"), ("roomid=a%2Fb", "roomid"),
                             ("before=-1", "before"), ("sort=asc", "sort")]:
            bad = await srv.call(f"listrecord?{query}")
            assert bad["code"] == 2101 and bad["_status"] == 400, (query, bad)
            assert field in bad["message"], (query, bad)


async def test_rate_limited_per_app(tmp_path: Path) -> None:
    async with running_server(make_settings(tmp_path, write_rate_per_s=3)) as srv:
        codes = [(await srv.call("listrecord"))["code"] for _ in range(6)]
        assert codes[:3] == [0, 0, 0] and 2105 in codes[3:]
