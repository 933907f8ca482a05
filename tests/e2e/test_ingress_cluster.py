"""An ingress follows its room when its node dies: two ``cloudrec serve`` processes sharing a
real PostgreSQL and Redis (tests/services.py) and one storage root, a GStreamer RTSP camera on
loopback pulled into a room whose uid is recorded. The node that runs the ingress is SIGKILLed;
the other claims it, its state goes back to ``active`` there, and the recording goes on after a
discontinuity."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.ingress_sources import RtspCamera, gst_rtsp_available
from tests.e2e.test_cluster import base_of, holder, start_on
from tests.helpers import APPID, HEADERS, LOCAL_STORAGE, segments_in, wait_for
from tests.media_check import ffprobe_streams, playlist_lines, probe_playlist
from tests.nodes import Node

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not gst_rtsp_available(),
                                 reason="GStreamer's RTSP server is not installed")]


@pytest.fixture
async def pair(tmp_path: Path, postgres_url: str, redis_url: str) -> AsyncIterator[list[Node]]:
    shared = tmp_path / "shared"
    shared.mkdir()
    nodes = [Node(tmp_path / name, node_id=name, workers=1, database_url=postgres_url,
                  redis_url=redis_url, cluster_secret="cluster-test-secret",
                  storage_root=str(shared), allow_private_urls=True, allow_private_storage=True)
             for name in ("A", "B")]
    for node in nodes:
        node.start()
    try:
        for node in nodes:
            await node.ready()
        yield nodes
    finally:
        for node in nodes:
            node.kill()


async def ingress(node: Node, method: str, tail: str = "", body: Any = None) -> dict[str, Any]:
    async with httpx.AsyncClient(headers=HEADERS, timeout=30) as client:
        r = await client.request(method, f"{node.base}/app/{APPID}/v1/ingress{tail}", json=body)
    return dict(r.json())


async def test_an_ingress_moves_with_its_room_when_its_node_dies(pair: list[Node],
                                                                 tmp_path: Path) -> None:
    camera = RtspCamera()
    camera.start()
    try:
        created = await ingress(pair[0], "POST", body={"roomid": "gate", "uid": "cam",
                                                       "url": camera.url})
        assert created["code"] == 0, created
        ingressid = created["ingressid"]

        async def state_on(node: Node, states: set[str], since: int = 0) -> dict[str, Any] | None:
            data = (await ingress(node, "GET", f"/{ingressid}"))["data"]
            return data if data["state"] in states and data["since"] >= since else None

        await wait_for(lambda: state_on(pair[1], {"active"}), interval=0.2, what="active")
        resid = (await pair[1].call("applyrecord", {}))["resid"]
        recordid = await start_on(pair[1], resid, "gate", "cam", dict(LOCAL_STORAGE))
        playlist = (tmp_path / "shared" / LOCAL_STORAGE["bucket"] / "/".join(
            LOCAL_STORAGE["fileprefix"]) / (base_of("gate", recordid, "cam") + ".m3u8"))
        await wait_for(lambda: len(segments_in(playlist)) >= 2, interval=0.2,
                       what="two segments stored")
        victim = await holder(pair, "gate")
        survivor = pair[1 - pair.index(victim)]
        before = segments_in(playlist)
        victim.kill()
        killed_ms = int(time.time() * 1000)

        moved = await wait_for(lambda: state_on(survivor, {"connecting", "retrying", "active"},
                                                since=killed_ms),
                               timeout=40, interval=0.2, what="a new state after the kill")
        # until the new worker reports it, the state says where it went (not the dead one's)
        assert moved["state"] == "active" or moved["error"], moved

        async def recorded_there() -> dict[str, Any] | None:
            data = await state_on(survivor, {"active"}, since=killed_ms)
            pubs = (data or {}).get("publishers") or [{}]
            return data if pubs[0].get("video_codec") == "h264" else None

        data = await wait_for(recorded_there, timeout=40, interval=0.2,
                              what="active again, with video, after the kill")
        assert data["error"] is None and data["publishers"][0]["audio_codec"] == "aac", data
        assert data["reconnects"] >= 1, data  # the move counts as one
        assert (await holder([survivor], "gate")) is survivor
        await wait_for(lambda: len(segments_in(playlist)) >= len(before) + 2, timeout=40,
                       interval=0.2, what="two more segments after the kill")
        stopped = await survivor.call("stoprecord", {"resid": resid, "appid": APPID,
                                                     "roomid": "gate", "recordid": recordid})
        assert stopped["code"] == 0, stopped
        assert (await ingress(survivor, "DELETE", f"/{ingressid}"))["code"] == 0
    finally:
        camera.kill()
    lines = playlist_lines(playlist)
    listed = segments_in(playlist)
    assert set(before) <= set(listed) and len(listed) >= len(before) + 2, (before, listed)
    assert "#EXT-X-DISCONTINUITY" in lines and lines[-1] == "#EXT-X-ENDLIST", lines
    probe = probe_playlist(playlist)
    assert probe.video_codec == "h264" and probe.audio_codec == "aac", probe
    assert probe.video_frames >= 30 and probe.audio_frames > 0, probe
    streams = ffprobe_streams(playlist)
    if streams is not None:
        assert sorted(str(s["codec_name"]) for s in streams) == ["aac", "h264"], streams
