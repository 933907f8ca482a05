"""More pulled sources, end to end on one real node, their recordings decoded:

- ``rtmp://``: FFmpeg serving one RTMP client (``-listen 1``) with an H.264 + AAC clip in a loop;
- H.265: an HEVC + AAC MP4 over HTTP, recorded as H.264 (transcoded) + AAC, and a GStreamer
  RTSP camera sending H.265 (``rtph265pay``) + G.711, recorded as H.264 + AAC;
- bad sources: random bytes over HTTP, and MPEG-TS whose video switches from H.264 to H.265
  midway, on new PIDs or on the same one. The ingress says ``retrying`` with the reason, and
  the worker goes on: another ingress on it becomes active.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
from pathlib import Path

import pytest

from tests.e2e.ingress_sources import RtspCamera, gst_rtsp_available, http_files, make_clip
from tests.e2e.test_ingress import (  # noqa: F401 - node is a fixture
    check_recording,
    ingress,
    node,
    playlist_of,
    record,
    stop,
    wait_state,
)
from tests.helpers import Server, free_port, seconds_in, wait_for
from tests.media_check import probe_playlist


def make_hevc(path: Path, seconds: int = 4, fmt: str = "mp4", **muxer: str) -> Path:
    """An H.265 (libx265) + AAC clip, a key frame every second; extra muxer options as
    ``name=value``."""
    extra = [item for k, v in muxer.items() for item in (f"-{k}", v)]
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
         f"testsrc=size=320x240:rate=15:duration={seconds}", "-f", "lavfi", "-i",
         f"sine=frequency=440:sample_rate=48000:duration={seconds}", "-c:v", "libx265",
         "-preset", "ultrafast", "-x265-params", "log-level=error:keyint=15", "-pix_fmt",
         "yuv420p", "-c:a", "aac", "-shortest",
         *(["-movflags", "+faststart", "-tag:v", "hvc1"] if fmt == "mp4" else []), *extra,
         "-f", fmt, str(path)], check=True)
    return path


async def test_rtmp_pull_is_recorded(node: Server, tmp_path: Path) -> None:  # noqa: F811
    clip = make_clip(tmp_path / "clip.mp4", seconds=4)
    port = free_port()
    ffmpeg = await asyncio.create_subprocess_exec(
        "ffmpeg", "-v", "error", "-re", "-stream_loop", "-1", "-i", str(clip), "-c", "copy",
        "-f", "flv", "-listen", "1", f"rtmp://127.0.0.1:{port}/live/x",
        stdin=asyncio.subprocess.DEVNULL)
    try:
        created = await ingress(node, "POST", body={
            "roomid": "rtmp", "uid": "obs", "url": f"rtmp://127.0.0.1:{port}/live/x"})
        assert created["code"] == 0, created
        data = await wait_state(node, created["ingressid"], {"active"})
        assert data["kind"] == "rtmp", data
        recordid = await record(node, "rtmp", "obs")
        playlist = playlist_of(node, "rtmp", recordid, "obs")
        await wait_for(lambda: seconds_in(playlist) >= 4, timeout=30, what="4 s recorded")
        data = (await ingress(node, "GET", f"/{created['ingressid']}"))["data"]
        assert data["state"] == "active", data
        assert data["publishers"][0]["source_codecs"] == {"video": "h264", "audio": "aac"}
        await stop(node, "rtmp", recordid)
        assert (await ingress(node, "DELETE", f"/{created['ingressid']}"))["code"] == 0
    finally:
        if ffmpeg.returncode is None:
            ffmpeg.kill()
        await ffmpeg.wait()
    check_recording(playlist, 4.0)
    assert probe_playlist(playlist).width == 320


async def test_h265_pull_is_recorded_as_h264(node: Server, tmp_path: Path) -> None:  # noqa: F811
    media = tmp_path / "media"
    media.mkdir()
    make_hevc(media / "hevc.mp4", seconds=5)
    with http_files(media) as base:
        created = await ingress(node, "POST", body={"roomid": "hevc", "uid": "cam",
                                                   "url": f"{base}/hevc.mp4"})
        assert created["code"] == 0, created
        await wait_state(node, created["ingressid"], {"active"})
        recordid = await record(node, "hevc", "cam")
        playlist = playlist_of(node, "hevc", recordid, "cam")
        await wait_for(lambda: seconds_in(playlist) >= 3, timeout=30, what="3 s recorded")
        data = (await ingress(node, "GET", f"/{created['ingressid']}"))["data"]
        pub = data["publishers"][0]
        assert pub["source_codecs"] == {"video": "h265", "audio": "aac"}, pub
        assert pub["video_codec"] == "h264", pub
        await stop(node, "hevc", recordid)
        assert (await ingress(node, "DELETE", f"/{created['ingressid']}"))["code"] == 0
    check_recording(playlist, 3.0)
    probe = probe_playlist(playlist)
    assert (probe.width, probe.height) == (320, 240), probe


async def test_garbage_and_a_codec_switch_are_reported_and_the_worker_goes_on(
        node: Server, tmp_path: Path) -> None:  # noqa: F811
    media = tmp_path / "media"
    media.mkdir()
    (media / "garbage.ts").write_bytes(random.Random(7).randbytes(512 * 1024))
    first = make_clip(tmp_path / "h264.ts", seconds=3, fmt="mpegts")
    second = make_hevc(tmp_path / "h265.ts", seconds=3, fmt="mpegts",
                       mpegts_start_pid="0x200", mpegts_pmt_start_pid="0x1100")
    (media / "switch.ts").write_bytes(first.read_bytes() + second.read_bytes())
    same_pid = make_hevc(tmp_path / "h265-same-pid.ts", seconds=3, fmt="mpegts")
    (media / "same-pid.ts").write_bytes(first.read_bytes() + same_pid.read_bytes())
    make_clip(media / "good.mp4", seconds=20)
    with http_files(media) as base:
        garbage = await ingress(node, "POST", body={"roomid": "bad", "uid": "noise",
                                                   "url": f"{base}/garbage.ts"})
        switch = await ingress(node, "POST", body={"roomid": "bad", "uid": "switch",
                                                  "url": f"{base}/switch.ts"})
        same = await ingress(node, "POST", body={"roomid": "bad", "uid": "same",
                                                "url": f"{base}/same-pid.ts"})
        assert garbage["code"] == switch["code"] == same["code"] == 0, (garbage, switch, same)
        data = await wait_state(node, garbage["ingressid"], {"retrying", "error"})
        assert data["error"] and data["publishers"] == [], data
        await wait_state(node, switch["ingressid"], {"active"})
        data = await wait_state(node, switch["ingressid"], {"retrying", "error"})
        assert "streams changed midway" in data["error"], data
        await wait_state(node, same["ingressid"], {"active"})
        data = await wait_state(node, same["ingressid"], {"retrying", "error"})
        assert "changed its codec midway" in data["error"], data

        good = await ingress(node, "POST", body={"roomid": "good", "uid": "cam",
                                                "url": f"{base}/good.mp4"})
        await wait_state(node, good["ingressid"], {"active"})
        recordid = await record(node, "good", "cam")
        playlist = playlist_of(node, "good", recordid, "cam")
        await wait_for(lambda: seconds_in(playlist) >= 2, timeout=30, what="2 s recorded")
        await stop(node, "good", recordid)
        health = (await node.client.get(f"{node.base}/healthz")).json()
        assert health["ok"] and health["workers"], health
        for created in (garbage, switch, same, good):
            assert (await ingress(node, "DELETE", f"/{created['ingressid']}"))["code"] == 0
    check_recording(playlist, 2.0)


@pytest.mark.skipif(not gst_rtsp_available(), reason="GStreamer's RTSP server is not installed")
async def test_h265_rtsp_camera_is_recorded_as_h264(node: Server) -> None:  # noqa: F811
    camera = RtspCamera(video="h265")
    camera.start()
    try:
        created = await ingress(node, "POST", body={"roomid": "hevccam", "uid": "cam",
                                                   "url": camera.url})
        assert created["code"] == 0, created
        await wait_state(node, created["ingressid"], {"active"})
        recordid = await record(node, "hevccam", "cam")
        playlist = playlist_of(node, "hevccam", recordid, "cam")
        await wait_for(lambda: seconds_in(playlist) >= 3, timeout=40, what="3 s recorded")
        pub = (await ingress(node, "GET", f"/{created['ingressid']}"))["data"]["publishers"][0]
        assert pub["source_codecs"] == {"video": "h265", "audio": "pcma"}, pub
        assert pub["video_codec"] == "h264", pub
        await stop(node, "hevccam", recordid)
        assert (await ingress(node, "DELETE", f"/{created['ingressid']}"))["code"] == 0
    finally:
        camera.kill()
    check_recording(playlist, 3.0)
    probe = probe_playlist(playlist)
    assert (probe.width, probe.height) == (320, 240), probe
