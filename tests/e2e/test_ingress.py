"""Pull ingress end to end: a real node pulls sources on loopback into its rooms, and the
recordings of their uids are decoded.

- an MP4 clip over HTTP: active, recorded as h264 + aac; GET, list and DELETE shapes;
- a GStreamer RTSP server like a camera (H.264 + G.711 A-law): active, recorded as h264 + aac;
  killed and started again, the ingress goes retrying then active by itself and the recording
  goes on after a discontinuity;
- validation: 2101 naming ``url``, ``roomid``, ``uid``, ``body``; a loopback source refused
  without ``allow_private_urls``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.ingress_sources import RtspCamera, gst_rtsp_available, http_files, make_clip
from tests.helpers import (
    APPID,
    HEADERS,
    Server,
    make_settings,
    running_server,
    seconds_in,
    source_body,
    startrecord,
    wait_for,
)
from tests.media_check import ffprobe_streams, playlist_lines, probe_playlist


def ingress_url(server: Server, tail: str = "") -> str:
    return f"{server.base}/app/{APPID}/v1/ingress{tail}"


async def ingress(server: Server, method: str, tail: str = "", body: Any = None,
                  **kw: Any) -> dict[str, Any]:
    r = await server.client.request(method, ingress_url(server, tail), headers=HEADERS,
                                    json=body, **kw)
    data = r.json()
    data["_status"] = r.status_code
    return data


async def wait_state(server: Server, ingressid: str, states: set[str],
                     timeout: float = 30.0) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        data = (await ingress(server, "GET", f"/{ingressid}"))["data"]
        return data if data["state"] in states else None

    return await wait_for(check, timeout=timeout, interval=0.2, what=f"state in {states}")


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Server]:
    settings = make_settings(tmp_path / "data", allow_private_urls=True, segment_seconds=2.0)
    async with running_server(settings) as server:
        yield server


def playlist_of(server: Server, room: str, recordid: str, uid: str) -> Path:
    return server.storage_root() / "test1" / "test2" / f"{APPID}_{room}_{recordid}_{uid}.m3u8"


async def record(server: Server, room: str, uid: str) -> str:
    data = await startrecord(server.call, source_body(await server.apply(), room, uid))
    assert data["code"] == 0, data
    return str(data["recordid"])


async def stop(server: Server, room: str, recordid: str) -> None:
    body = {"appid": APPID, "resid": "x", "roomid": room, "recordid": recordid}
    task = server.app.state.front.tasks.get(recordid)
    body["resid"] = task.resid
    data = await server.call("stoprecord", body)
    assert data["code"] == 0, data


def check_recording(playlist: Path, min_seconds: float) -> None:
    probe = probe_playlist(playlist)
    assert probe.video_codec == "h264" and probe.audio_codec == "aac", probe
    assert probe.duration >= min_seconds, probe
    assert probe.video_frames >= min_seconds * 10 and probe.audio_frames > 0, probe
    streams = ffprobe_streams(playlist)
    if streams is not None:
        assert sorted(s["codec_name"] for s in streams) == ["aac", "h264"], streams


async def test_http_mp4_pull_is_recorded_and_deleted(node: Server, tmp_path: Path) -> None:
    media = tmp_path / "media"
    media.mkdir()
    make_clip(media / "clip.mp4", seconds=6)
    with http_files(media) as base:
        url = f"{base}/clip.mp4?sig=secret-value"
        created = await ingress(node, "POST", body={"roomid": "hall", "uid": "cam1", "url": url})
        assert created["code"] == 0 and created["message"] == "success", created
        ingressid = created["ingressid"]
        data = await wait_state(node, ingressid, {"active"})
        assert data["ingressid"] == ingressid and data["roomid"] == "hall"
        assert data["uid"] == "cam1" and data["error"] is None
        assert "secret-value" not in data["url"] and data["url"].startswith(base)
        assert isinstance(data["since"], int)
        recordid = await record(node, "hall", "cam1")
        playlist = playlist_of(node, "hall", recordid, "cam1")
        await wait_for(lambda: seconds_in(playlist) >= 4, timeout=30, what="4 s recorded")
        data = (await ingress(node, "GET", f"/{ingressid}"))["data"]
        assert data["publishers"] and data["publishers"][0]["video_codec"] == "h264", data
        listed = await ingress(node, "GET", params={"roomid": "hall"})
        assert [i["ingressid"] for i in listed["data"]["ingresses"]] == [ingressid]
        assert (await ingress(node, "GET", params={"roomid": "other"}))["data"]["ingresses"] == []
        deleted = await ingress(node, "DELETE", f"/{ingressid}")
        assert deleted["code"] == 0 and deleted["data"]["state"] == "stopped", deleted
        hub = node.app.state.hub
        await wait_for(lambda: not hub.is_publishing(APPID, "hall"), what="publisher left")
        again = await ingress(node, "DELETE", f"/{ingressid}")
        assert again["code"] == 4013 and again["_status"] == 404
        assert (await ingress(node, "GET", "/ing_nope"))["code"] == 4013
        await stop(node, "hall", recordid)
    check_recording(playlist, 4.0)


@pytest.mark.skipif(not gst_rtsp_available(), reason="GStreamer's RTSP server is not installed")
async def test_rtsp_camera_resumes_after_it_restarts(node: Server) -> None:
    camera = RtspCamera()
    camera.start()
    try:
        created = await ingress(node, "POST", body={"roomid": "yard", "uid": "cam",
                                                   "url": camera.url})
        assert created["code"] == 0, created
        ingressid = created["ingressid"]
        data = await wait_state(node, ingressid, {"active"})
        recordid = await record(node, "yard", "cam")
        playlist = playlist_of(node, "yard", recordid, "cam")
        await wait_for(lambda: seconds_in(playlist) >= 4, timeout=30, what="4 s recorded")
        data = (await ingress(node, "GET", f"/{ingressid}"))["data"]
        assert data["publishers"][0]["source_codecs"] == {"video": "h264", "audio": "pcma"}
        camera.kill()
        data = await wait_state(node, ingressid, {"retrying"}, timeout=20)
        assert data["error"], data
        camera.start()
        await wait_state(node, ingressid, {"active"}, timeout=30)
        before = seconds_in(playlist)
        await wait_for(lambda: seconds_in(playlist) >= before + 4, timeout=30,
                       what="4 s more recorded after the restart")
        await stop(node, "yard", recordid)
        assert (await ingress(node, "DELETE", f"/{ingressid}"))["code"] == 0
    finally:
        camera.kill()
    assert "#EXT-X-DISCONTINUITY" in playlist_lines(playlist)
    check_recording(playlist, 8.0)


@pytest.mark.parametrize(("body", "field"), [
    ({"roomid": "r", "uid": "u", "url": "ftp://example.com/x"}, "url"),
    ({"roomid": "r", "uid": "u", "url": "rtsp:///cam"}, "url"),
    ({"roomid": "r", "uid": "u", "url": "janus+http://h:8088/janus"}, "url"),
    ({"roomid": "bad room", "uid": "u", "url": "rtsp://example.com/cam"}, "roomid"),
    ({"roomid": "r", "uid": "a/b", "url": "rtsp://example.com/cam"}, "uid"),
    ({"roomid": "r", "url": "rtsp://example.com/cam"}, "uid"),
    ([1, 2], "body"),
])
async def test_bad_bodies_answer_2101_naming_the_field(node: Server, body: Any,
                                                       field: str) -> None:
    data = await ingress(node, "POST", body=body)
    assert data["code"] == 2101 and data["_status"] == 400, data
    assert field in data["message"], data


async def test_private_source_refused_without_allow_private_urls(tmp_path: Path) -> None:
    async with running_server(make_settings(tmp_path / "data")) as server:
        data = await ingress(server, "POST", body={"roomid": "r", "uid": "u",
                                                   "url": "rtsp://127.0.0.1:8554/cam"})
        assert data["code"] == 2101 and "url" in data["message"], data
        assert "allow_private_urls" in data["message"]
        no_auth = await server.client.post(ingress_url(server), json={})
        assert no_auth.json()["code"] == 1002  # no AppID header


async def test_cli_console_and_metrics_show_ingresses(node: Server, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cloudrec.cli_rec import rec_app
    from tests.helpers import KEY, LOCAL_STORAGE, SECRET

    creds = ["--server", node.base, "--appid", str(APPID), "--key", KEY, "--secret", SECRET]

    def cli(*args: str) -> Any:
        return CliRunner().invoke(rec_app, [*creds, *args])

    storage = tmp_path / "storage.json"
    storage.write_text(__import__("json").dumps(LOCAL_STORAGE))
    done = await asyncio.to_thread(cli, "ingress", "add", "rtsp://user:pw@127.0.0.1:9/cam",
                                   "--room", "gate", "--uid", "cam9")
    assert done.exit_code == 0, done.output
    ingressid = done.stdout.strip()
    listed = await asyncio.to_thread(cli, "ingress", "list", "--room", "gate")
    assert ingressid in listed.stdout and "pw" not in listed.stdout, listed.stdout
    shown = await asyncio.to_thread(cli, "ingress", "show", ingressid)
    assert '"roomid": "gate"' in shown.stdout and "user" not in shown.stdout, shown.stdout
    await wait_state(node, ingressid, {"retrying"}, timeout=20)  # nothing listens on port 9
    rule = await asyncio.to_thread(cli, "autorecord", "add", "--room", "gate*", "--storage",
                                   str(storage))
    assert rule.exit_code == 0, rule.output
    rules = await asyncio.to_thread(cli, "autorecord", "list")
    assert rule.stdout.strip() in rules.stdout

    page = await node.client.get(f"{node.base}/console/api/ingresses")
    assert page.status_code == 200, page.text
    body = page.json()
    assert [i["ingressid"] for i in body["ingresses"]] == [ingressid]
    assert body["ingresses"][0]["state"] == "retrying" and "pw" not in page.text
    assert [r["ruleid"] for r in body["rules"]] == [rule.stdout.strip()]
    assert "sk" not in [r["storagecfg"]["secretkey"] for r in body["rules"]]

    metrics = (await node.client.get(f"{node.base}/metrics")).text
    assert 'cloudrec_ingresses{kind="rtsp",node=' in metrics and 'state="retrying"' in metrics
    assert "cloudrec_ingress_reconnects_total" in metrics

    assert (await asyncio.to_thread(cli, "ingress", "delete", ingressid)).exit_code == 0
    deleted = await asyncio.to_thread(cli, "autorecord", "delete", rule.stdout.strip())
    assert deleted.exit_code == 0
    gone = await asyncio.to_thread(cli, "ingress", "delete", ingressid)
    assert gone.exit_code == 1 and "4013" in gone.output


async def test_srt_caller_pull(node: Server, tmp_path: Path) -> None:
    """FFmpeg listens as an SRT server sending MPEG-TS; the ingress calls it."""
    from tests.helpers import free_port

    clip = make_clip(tmp_path / "clip.ts", seconds=20, fmt="mpegts")
    port = free_port()
    ffmpeg = await asyncio.create_subprocess_exec(
        "ffmpeg", "-v", "error", "-re", "-i", str(clip), "-c", "copy", "-f", "mpegts",
        f"srt://127.0.0.1:{port}?mode=listener", stdin=asyncio.subprocess.DEVNULL)
    try:
        created = await ingress(node, "POST", body={"roomid": "srt", "uid": "feed",
                                                   "url": f"srt://127.0.0.1:{port}"})
        assert created["code"] == 0, created
        await wait_state(node, created["ingressid"], {"active"})
        recordid = await record(node, "srt", "feed")
        playlist = playlist_of(node, "srt", recordid, "feed")
        await wait_for(lambda: seconds_in(playlist) >= 4, timeout=30, what="4 s recorded")
        await stop(node, "srt", recordid)
        assert (await ingress(node, "DELETE", f"/{created['ingressid']}"))["code"] == 0
    finally:
        if ffmpeg.returncode is None:
            ffmpeg.kill()
        await ffmpeg.wait()
    check_recording(playlist, 4.0)


async def test_whep_pull(node: Server) -> None:
    from tests.e2e.whep_source import whep_server

    async with whep_server() as url:
        created = await ingress(node, "POST", body={"roomid": "whep", "uid": "peer",
                                                   "url": url})
        assert created["code"] == 0, created
        await wait_state(node, created["ingressid"], {"active"})
        recordid = await record(node, "whep", "peer")
        playlist = playlist_of(node, "whep", recordid, "peer")
        await wait_for(lambda: seconds_in(playlist) >= 4, timeout=40, what="4 s recorded")
        data = (await ingress(node, "GET", f"/{created['ingressid']}"))["data"]
        assert data["publishers"][0]["source_codecs"] == {"video": "h264", "audio": "opus"}
        await stop(node, "whep", recordid)
        assert (await ingress(node, "DELETE", f"/{created['ingressid']}"))["code"] == 0
    check_recording(playlist, 4.0)
