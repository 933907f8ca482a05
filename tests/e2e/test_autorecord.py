"""Auto-record rules end to end: rules through the API, a WebRTC publisher recorded with no
recording API call and stopped when it leaves, a mix of the room while anyone publishes, and
a pulled ingress recorded by a rule. Every file is decoded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cloudrec.tokens import make_token
from cloudrec.webrtc.whip_client import Publisher
from tests.e2e.ingress_sources import http_files, make_clip
from tests.helpers import (
    APPID,
    HEADERS,
    LOCAL_STORAGE,
    SECRET,
    Server,
    make_settings,
    running_server,
    seconds_in,
    wait_for,
)
from tests.media_check import playlist_lines, probe_playlist


async def rules_call(server: Server, method: str, tail: str = "", body: Any = None
                     ) -> dict[str, Any]:
    r = await server.client.request(method, f"{server.base}/app/{APPID}/v1/autorecord{tail}",
                                    headers=HEADERS, json=body)
    data = r.json()
    data["_status"] = r.status_code
    return data


def tasks_of(server: Server, room: str) -> list[Any]:
    return server.app.state.front.tasks.list_tasks(appid=APPID, roomid=room, limit=50)


def files_dir(server: Server) -> Path:
    return server.storage_root() / "test1" / "test2"


async def test_rule_records_a_publisher_until_it_leaves(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", segment_seconds=2.0)
    async with running_server(settings) as server:
        bad = await rules_call(server, "POST", body={"roomid": "a b", "streamtype": 2,
                                                     "recordtype": 0,
                                                     "storagecfg": LOCAL_STORAGE})
        assert bad["code"] == 2101 and "roomid" in bad["message"], bad
        added = await rules_call(server, "POST", body={
            "roomid": "class-*", "streamtype": 2, "recordtype": 0,
            "storagecfg": LOCAL_STORAGE})
        assert added["code"] == 0, added
        ruleid = added["ruleid"]
        listed = await rules_call(server, "GET")
        assert [r["ruleid"] for r in listed["data"]["rules"]] == [ruleid]
        assert listed["data"]["rules"][0]["storagecfg"]["secretkey"] == "***"

        other = Publisher(server.whip_url("lobby", "u0"), make_token(APPID, "lobby", "u0", SECRET))
        pub = Publisher(server.whip_url("class-7", "u1"),
                        make_token(APPID, "class-7", "u1", SECRET))
        await other.start()
        await pub.start()
        await pub.wait_connected()
        task = (await wait_for(lambda: tasks_of(server, "class-7"), what="a task"))[0]
        assert task.uid == "u1" and task.streamtype == 2
        playlist = files_dir(server) / f"{APPID}_class-7_{task.recordid}_u1.m3u8"
        await wait_for(lambda: seconds_in(playlist) >= 4, timeout=30, what="4 s recorded")
        listed = await server.call("listrecord?roomid=class-7")
        assert [r["recordid"] for r in listed["data"]["records"]] == [task.recordid]
        await pub.stop()
        await wait_for(lambda: not server.app.state.front.tasks.get(task.recordid).active,
                       timeout=30, what="the recording stopped when its publisher left")
        assert playlist_lines(playlist)[-1] == "#EXT-X-ENDLIST"
        assert tasks_of(server, "lobby") == []  # no rule matches it
        await other.stop()
        assert (await rules_call(server, "DELETE", f"/{ruleid}"))["code"] == 0
        assert (await rules_call(server, "DELETE", f"/{ruleid}"))["code"] == 4013
        assert (await rules_call(server, "GET"))["data"]["rules"] == []
    probe = probe_playlist(playlist)
    assert probe.video_codec == "h264" and probe.audio_codec == "aac", probe
    assert probe.duration >= 4 and probe.video_frames >= 40 and probe.audio_frames > 0, probe


async def test_rule_records_an_ingress_and_survives_a_restart(tmp_path: Path) -> None:
    media = tmp_path / "media"
    media.mkdir()
    make_clip(media / "clip.mp4", seconds=20)
    settings = make_settings(tmp_path / "data", segment_seconds=2.0, allow_private_urls=True)
    with http_files(media) as base:
        async with running_server(settings) as server:
            assert (await rules_call(server, "POST", body={
                "roomid": "*", "streamtype": 2, "recordtype": 0,
                "storagecfg": LOCAL_STORAGE}))["code"] == 0
            r = await server.client.post(f"{server.base}/app/{APPID}/v1/ingress",
                                         headers=HEADERS, json={"roomid": "stage", "uid": "feed",
                                                                "url": f"{base}/clip.mp4"})
            ingressid = r.json()["ingressid"]
            task = (await wait_for(lambda: tasks_of(server, "stage"), what="a task"))[0]
            playlist = files_dir(server) / f"{APPID}_stage_{task.recordid}_feed.m3u8"
            await wait_for(lambda: seconds_in(playlist) >= 2, timeout=30, what="recorded")
        # a restart: the ingress and the rule come back by themselves
        async with running_server(settings) as server:
            async def active() -> bool:
                r = await server.client.get(f"{server.base}/app/{APPID}/v1/ingress/{ingressid}",
                                            headers=HEADERS)
                return r.json()["data"]["state"] == "active"

            await wait_for(active, timeout=30, what="the ingress resumed")
            # a drain finished the first recording; the rule started one recording anew
            now = await wait_for(lambda: [t for t in tasks_of(server, "stage") if t.active],
                                 what="a new recording")
            assert len(now) == 1 and now[0].recordid != task.recordid
            second = files_dir(server) / f"{APPID}_stage_{now[0].recordid}_feed.m3u8"
            await wait_for(lambda: seconds_in(second) >= 2, timeout=30, what="recorded again")
            assert len((await rules_call(server, "GET"))["data"]["rules"]) == 1
            r = await server.client.delete(f"{server.base}/app/{APPID}/v1/ingress/{ingressid}",
                                           headers=HEADERS)
            assert r.json()["data"]["state"] == "stopped"
            await wait_for(lambda: not any(t.active for t in tasks_of(server, "stage")),
                           timeout=30, what="every recording of the ingress stopped")
    for recorded in (playlist, second):
        assert playlist_lines(recorded)[-1] == "#EXT-X-ENDLIST"
        probe = probe_playlist(recorded)
        assert probe.video_codec == "h264" and probe.audio_codec == "aac", probe
        assert probe.duration >= 2 and probe.video_frames >= 20, probe
