"""Source-stream recording end to end: real WHIP publishers over loopback → cloudrec → HLS in
local storage, read back with PyAV and ffprobe."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from cloudrec.media.codecs.h264 import parameter_sets
from cloudrec.tokens import make_token
from cloudrec.webrtc.whip_client import Publisher
from tests.helpers import (
    APPID,
    SECRET,
    Server,
    make_settings,
    query_until,
    running_server,
    source_body,
    startrecord,
)
from tests.media_check import ffprobe_streams, playlist_lines, probe_playlist


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    # allow_private_storage: an S3 endpoint on loopback is probed (and found unreachable)
    async with running_server(make_settings(tmp_path, idle_timeout_s=3.0, segment_seconds=2.0,
                                            write_rate_per_s=1000, query_rate_per_s=1000,
                                            allow_private_storage=True)) as s:
        yield s


async def publish(server: Server, room: str, uid: str, **kw: Any) -> Publisher:
    pub = Publisher(server.whip_url(room, uid), make_token(APPID, room, uid, SECRET), **kw)
    await pub.start()
    await pub.wait_connected()
    return pub


async def start(server: Server, room: str, uid: str, recordtype: int = 0) -> tuple[str, str, float]:
    resid = await server.apply()
    data = await startrecord(server.call, source_body(resid, room, uid, recordtype))
    assert data["code"] == 0, data
    return resid, data["recordid"], time.monotonic()


async def stop(server: Server, room: str, resid: str, recordid: str) -> float:
    data = await server.call("stoprecord", {"resid": resid, "appid": APPID, "roomid": room,
                                            "recordid": recordid})
    assert data["code"] == 0, data
    return time.monotonic()


def playlist_of(server: Server, room: str, recordid: str, uid: str) -> Path:
    return server.storage_root() / "test1" / "test2" / f"{APPID}_{room}_{recordid}_{uid}.m3u8"


@pytest.mark.parametrize("recordtype", [0, 1, 2])
async def test_records_published_stream(server: Server, recordtype: int) -> None:
    pub = await publish(server, "room1", "alice")
    try:
        resid, recordid, t0 = await start(server, "room1", "alice", recordtype)
        live = await query_until(server.call, "room1", recordid,
                                 lambda a: a["data"]["status"] in (1, 2), what="under way")
        assert live["code"] == 0 and live["data"]["status"] in (1, 2)
        await query_until(server.call, "room1", recordid,
                          lambda a: a["data"]["segments"] >= 2, what="two segments stored")
        t1 = await stop(server, "room1", resid, recordid)
    finally:
        await pub.stop()
    playlist = playlist_of(server, "room1", recordid, "alice")
    lines = playlist_lines(playlist)
    assert lines[0] == "#EXTM3U" and lines[-1] == "#EXT-X-ENDLIST"
    segments = [line for line in lines if line.endswith(".ts")]
    assert len(segments) >= 2
    assert all((playlist.parent / name).stat().st_size > 0 for name in segments)
    probe = probe_playlist(playlist)
    assert abs(probe.duration - (t1 - t0)) <= 1.0, (probe.duration, t1 - t0)
    if recordtype in (0, 1):
        assert (probe.width, probe.height, probe.video_codec) == (320, 240, "h264")
        assert probe.video_frames >= 15 * 3
    else:
        assert probe.video_frames == 0 and probe.video_codec is None
    if recordtype in (0, 2):
        assert probe.audio_codec == "aac" and probe.audio_rate == 48000 and probe.audio_frames > 100
    else:
        assert probe.audio_frames == 0 and probe.audio_codec is None
    streams = ffprobe_streams(playlist)
    if streams is not None:
        kinds = sorted(str(s["codec_type"]) for s in streams)
        assert kinds == {0: ["audio", "video"], 1: ["video"], 2: ["audio"]}[recordtype]
    after = await server.call(f"queryrecord/room1/{recordid}")
    assert after["code"] == 4013 and after["data"]["stopreason"] == "api"
    assert after["data"]["segments"] == len(segments)


async def test_h264_is_remuxed_not_reencoded(server: Server) -> None:
    """The recording carries the publisher's own SPS/PPS: no decoder or encoder in between."""
    sub = server.app.state.hub.subscribe(APPID, "room2", "bob")
    pub = await publish(server, "room2", "bob")
    try:
        published_sps = None
        while published_sps is None:
            item = await asyncio.wait_for(sub.get(), 10)
            if isinstance(item, tuple) and item[1].kind == "video" and item[1].keyframe:
                published_sps, published_pps = parameter_sets(item[1].data)
        sub.close()
        resid, recordid, _ = await start(server, "room2", "bob", 1)
        live = await query_until(server.call, "room2", recordid,
                                 lambda a: a["data"]["segments"] >= 1, what="a segment stored")
        assert live["data"]["videotranscoded"] is False
        await stop(server, "room2", resid, recordid)
    finally:
        await pub.stop()
    playlist = playlist_of(server, "room2", recordid, "bob")
    first_segment = playlist.parent / next(x for x in playlist_lines(playlist) if x.endswith(".ts"))
    import av

    with av.open(str(first_segment)) as container:
        packet = next(p for p in container.demux(video=0) if p.size)
        recorded_sps, recorded_pps = parameter_sets(bytes(packet))
    assert published_sps is not None and recorded_sps == published_sps
    assert recorded_pps == published_pps


async def test_vp8_is_transcoded_to_h264(server: Server) -> None:
    pub = await publish(server, "room3", "carol", video_codec="vp8")
    try:
        resid, recordid, t0 = await start(server, "room3", "carol", 0)
        live = await query_until(server.call, "room3", recordid,
                                 lambda a: a["data"]["segments"] >= 1, what="a segment stored")
        t1 = await stop(server, "room3", resid, recordid)
    finally:
        await pub.stop()
    assert live["data"]["videotranscoded"] is True
    probe = probe_playlist(playlist_of(server, "room3", recordid, "carol"))
    assert (probe.video_codec, probe.width, probe.height) == ("h264", 320, 240)
    assert probe.audio_codec == "aac"
    assert abs(probe.duration - (t1 - t0)) <= 1.0


async def test_task_errors_while_recording(server: Server) -> None:
    pub = await publish(server, "room4", "dave")
    try:
        resid, recordid, _ = await start(server, "room4", "dave")
        again = await server.call("startrecord", source_body(resid, "room4", "dave"))
        assert (again["code"], again["_status"]) == (4011, 409)
        other = await server.call("startrecord",
                                  source_body(await server.apply(), "room4", "nobody"))
        assert other["code"] == 4005 and "nobody" in other["message"]
        body = {"resid": resid, "appid": APPID, "roomid": "room4", "recordid": recordid}
        from tests.helpers import SEED_START_MIXED

        update = await server.call("updatemixrecord",
                                   dict(body, mixconfig=SEED_START_MIXED["mixconfig"]))
        assert update["code"] == 4019
        wrong_resid = await server.call("stoprecord", dict(body, resid=await server.apply()))
        assert wrong_resid["code"] == 4012
        mixed = dict(SEED_START_MIXED, resid=await server.apply(), roomid="room4")
        mixed["mixconfig"] = {"templateid": 1, "output": SEED_START_MIXED["mixconfig"]["output"]}
        mixed["storagecfg"] = source_body("", "", "")["storagecfg"]
        mixed_started = await server.call("startrecord", mixed)  # mixed records (test_mixed.py)
        assert mixed_started["code"] == 0, mixed_started
        stop_mixed = {"resid": mixed["resid"], "appid": APPID, "roomid": "room4",
                      "recordid": mixed_started["recordid"]}
        assert (await server.call("stoprecord", stop_mixed))["code"] == 0
        s3 = source_body(await server.apply(), "room4", "dave")
        s3["storagecfg"] = dict(s3["storagecfg"], vender=0, endpoint="http://127.0.0.1:1")
        unreachable = await server.call("startrecord", s3)  # nothing listens on port 1
        assert unreachable["code"] == 4004 and "storagecfg" in unreachable["message"]
        assert (await server.call("stoprecord", body))["code"] == 0
        assert (await server.call("stoprecord", body))["code"] == 4013
        again_stopped = await server.call("startrecord", source_body(resid, "room4", "dave"))
        assert again_stopped["code"] == 4012
    finally:
        await pub.stop()


async def test_idle_recording_stops_by_itself(server: Server) -> None:
    pub = await publish(server, "room5", "erin")
    resid, recordid, _ = await start(server, "room5", "erin")
    await query_until(server.call, "room5", recordid,
                      lambda a: a["data"]["segments"] >= 1, what="a segment stored")
    await pub.stop()
    data = await query_until(server.call, "room5", recordid, lambda a: a["code"] == 4013,
                             timeout=10, what="the idle task stops")
    assert data["code"] == 4013, data
    assert data["data"]["stopreason"] == "idle" and data["data"]["status"] == 4
    lines = playlist_lines(playlist_of(server, "room5", recordid, "erin"))
    assert lines[-1] == "#EXT-X-ENDLIST"


async def test_mono_opus_publisher_gives_mono_aac(server: Server, tmp_path: Path) -> None:
    """A pre-encoded clip (sent without encoding) with mono Opus, as browsers send. A clip
    cannot answer a keyframe request, and recording starts at an IDR: a short GOP keeps the
    wait for the first one well inside the test's ±1 s."""
    from cloudrec.webrtc.synthetic import make_clip

    clip = make_clip(str(tmp_path / "clip.mkv"), seconds=2, width=320, height=240, voice=True,
                     audio_channels=1, gop=5)
    pub = await publish(server, "room6", "frank", clip=clip)
    try:
        resid, recordid, t0 = await start(server, "room6", "frank", 0)
        await query_until(server.call, "room6", recordid,
                          lambda a: a["data"]["segments"] >= 1, what="a segment stored")
        t1 = await stop(server, "room6", resid, recordid)
    finally:
        await pub.stop()
    playlist = playlist_of(server, "room6", recordid, "frank")
    import av

    with av.open(str(playlist)) as container:
        audio = container.streams.audio[0]
        frame = next(container.decode(audio))
        assert frame.layout.name == "mono" and frame.sample_rate == 48000
    probe = probe_playlist(playlist)
    assert (probe.width, probe.height) == (320, 240)
    assert abs(probe.duration - (t1 - t0)) <= 1.0
