"""startrecord's ``outputs``: the MP4 of a whole recording, snapshots and the file lists.

End to end with real WHIP publishers over loopback, real stores (a local directory, moto's S3
on loopback), and real restarts (SIGKILL). MP4s are checked with ``ffprobe``/``ffmpeg`` and
PyAV; snapshots are decoded with Pillow and compared with the publishers' solid colours.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any, AsyncIterator

import av
import numpy as np
import pytest
from PIL import Image

from cloudrec.errors import InvalidParameter
from cloudrec.media.mp4 import atoms
from cloudrec.models import StartRecordRequest, parse_request
from tests.e2e.test_callbacks import Receiver, serving
from tests.e2e.test_mixed import BLUE, GREEN, OUT, RED, near, publish
from tests.e2e.test_recording import publish as publish_pattern
from tests.e2e.test_restart import Proc, procs  # noqa: F401 (a fixture)
from tests.e2e.test_s3 import Moto, moto  # noqa: F401 (a fixture)
from tests.helpers import (
    APPID,
    LOCAL_STORAGE,
    SEED_START_MIXED,
    Server,
    file_kinds,
    free_port,
    make_settings,
    query_until,
    running_server,
    seconds_in,
    segments_in,
    source_body,
    startrecord,
    wait_for,
)
from tests.media_check import playlist_lines

pytestmark = pytest.mark.skipif(shutil.which("ffprobe") is None, reason="needs ffprobe")

PREFIX = "test1/test2/"
SNAP_S = 5
PART = 16 * 1024  # the multipart threshold and part size of the S3 test


# -- the request model ------------------------------------------------------------------------


def _parse(body: dict[str, Any]) -> StartRecordRequest:
    return parse_request(StartRecordRequest, body)


@pytest.mark.parametrize(
    ("outputs", "field"),
    [
        ({"mp4": 1}, "outputs.mp4"),
        ({"mp4": "true"}, "outputs.mp4"),
        ({"snapshotinterval": 4}, "outputs.snapshotinterval"),
        ({"snapshotinterval": 3601}, "outputs.snapshotinterval"),
        ({"snapshotinterval": 5.0}, "outputs.snapshotinterval"),
        ({"snapshotinterval": "10"}, "outputs.snapshotinterval"),
        ({"Mp4": True}, "outputs.Mp4"),
        ({"pushurl": ["rtmp://live.example.com/app/key"]}, "outputs.pushurl"),  # source task
        ([], "outputs"),
        ("mp4", "outputs"),
    ],
)
def test_source_outputs_are_validated_field_by_field(outputs: Any, field: str) -> None:
    with pytest.raises(InvalidParameter) as caught:
        _parse(source_body("r", "room", "u", outputs=outputs))
    assert caught.value.code == 2101 and caught.value.field == field, caught.value.message


def test_snapshots_need_video() -> None:
    with pytest.raises(InvalidParameter) as caught:
        _parse(source_body("r", "room", "u", recordtype=2, outputs={"snapshotinterval": 10}))
    assert caught.value.field == "outputs.snapshotinterval"
    mixed = copy.deepcopy(SEED_START_MIXED)
    mixed["mixconfig"]["output"]["streamtype"] = 2  # an audio-only mix
    with pytest.raises(InvalidParameter) as caught:
        _parse({**mixed, "outputs": {"snapshotinterval": 10}})
    assert caught.value.field == "outputs.snapshotinterval"


@pytest.mark.parametrize(
    ("pushurl", "field"),
    [
        (["http://live.example.com/app"], "outputs.pushurl[0]"),
        (["rtmp://a.example.com/x", "srt://"], "outputs.pushurl[1]"),
        (["rtmp://a/x", "rtmp://b/x", "srt://c:9000"], "outputs.pushurl"),
        (["rtmp://a/x", "rtmp://a/x"], "outputs.pushurl"),
        (["rtmp://a.example.com/" + "k" * 240], "outputs.pushurl[0]"),  # over 256 bytes
        (["rtmp://a.example.com:99999/x"], "outputs.pushurl[0]"),
        ("rtmp://a.example.com/x", "outputs.pushurl"),
    ],
)
def test_push_urls_are_validated(pushurl: Any, field: str) -> None:
    with pytest.raises(InvalidParameter) as caught:
        _parse({**SEED_START_MIXED, "outputs": {"pushurl": pushurl}})
    assert caught.value.code == 2101 and caught.value.field == field, caught.value.message


def test_valid_outputs_and_none() -> None:
    assert _parse(source_body("r", "room", "u")).outputs is None
    req = _parse(source_body("r", "room", "u", outputs={"mp4": True, "snapshotinterval": 5}))
    assert req.outputs is not None and req.outputs.mp4 and req.outputs.snapshotinterval == 5
    empty = _parse(source_body("r", "room", "u", outputs={})).outputs
    assert empty is not None and empty.mp4 is False and empty.snapshotinterval is None
    no_push = _parse({**SEED_START_MIXED, "outputs": {"pushurl": []}}).outputs
    assert no_push is not None and no_push.pushurl is None
    mixed = _parse({**SEED_START_MIXED, "outputs": {
        "mp4": False, "snapshotinterval": 3600,
        "pushurl": ["rtmp://live.example.com/app/key", "srt://127.0.0.1:9000?streamid=x"]}})
    assert mixed.outputs is not None and len(mixed.outputs.pushurl or []) == 2


# -- checks --------------------------------------------------------------------------------


def hls_duration(playlist: Path) -> float:
    return sum(float(line.split(":", 1)[1].rstrip(",")) for line in playlist_lines(playlist)
               if line.startswith("#EXTINF:"))


def check_mp4(mp4: Path, playlist: Path, kinds: list[str]) -> float:
    """ffprobe: the tracks, the duration (±0.2 s of the playlist's), moov before mdat;
    ffmpeg decodes it without an error; PyAV: DTS rise in every track. Returns the duration."""
    boxes = atoms(mp4)
    assert "moov" in boxes and "mdat" in boxes and boxes.index("moov") < boxes.index("mdat"), boxes
    probe = json.loads(subprocess.run(
        ["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json", str(mp4)],
        check=True, capture_output=True, text=True).stdout)
    assert sorted(s["codec_type"] for s in probe["streams"]) == kinds
    codecs = {s["codec_type"]: s["codec_name"] for s in probe["streams"]}
    assert codecs.get("video", "h264") == "h264" and codecs.get("audio", "aac") == "aac"
    duration = float(probe["format"]["duration"])
    assert abs(duration - hls_duration(playlist)) <= 0.2, (duration, hls_duration(playlist))
    decoded = subprocess.run(["ffmpeg", "-v", "error", "-i", str(mp4), "-f", "null", "-"],
                             capture_output=True, text=True)
    assert decoded.returncode == 0 and not decoded.stderr.strip(), decoded.stderr[-2000:]
    with av.open(str(mp4)) as container:
        last: dict[int, int] = {}
        for packet in container.demux():
            if packet.dts is None:
                continue
            assert packet.dts > last.get(packet.stream.index, -1), "DTS rise in every track"
            last[packet.stream.index] = packet.dts
    if "video" in kinds:
        with av.open(str(mp4)) as container:
            pts = [f.pts for f in container.decode(video=0)]
        assert pts and pts == sorted(pts) and len(set(pts)) == len(pts)
    return duration


def check_files(files: list[dict[str, Any]], root: Path, base: str, *, snapshots: int,
                mp4: bool) -> None:
    """The file list names every stored file with its kind, size and stored flag."""
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for f in files:
        by_kind.setdefault(f["kind"], []).append(f)
        assert f["name"].startswith(PREFIX + base) and f["stored"] is True, f
        assert (root / f["name"]).stat().st_size == f["size"], f
    assert [f["name"] for f in by_kind["playlist"]] == [f"{PREFIX}{base}.m3u8"]
    playlist = root / PREFIX / f"{base}.m3u8"
    listed = [line for line in playlist_lines(playlist) if line.endswith(".ts")]
    assert [f["name"] for f in by_kind["segment"]] == [PREFIX + n for n in listed]
    assert all(f["duration"] > 0 for f in by_kind["segment"])
    assert abs(by_kind["playlist"][0]["duration"] - hls_duration(playlist)) < 0.01
    assert len(by_kind.get("mp4", [])) == int(mp4)
    if mp4:
        assert by_kind["mp4"][0]["name"] == f"{PREFIX}{base}.mp4"
        assert by_kind["mp4"][0]["duration"] > 0
    assert len(by_kind.get("snapshot", [])) >= snapshots
    for f in by_kind.get("snapshot", []):
        assert re.fullmatch(re.escape(PREFIX + base) + r"_\d{13}\.jpg", f["name"]), f
        assert "duration" not in f


def check_snapshots(files: list[dict[str, Any]], root: Path, colour: tuple[int, int, int],
                    size: tuple[int, int]) -> None:
    """At least two JPEGs, SNAP_S (±1) s apart by their names, of the publisher's colour."""
    snaps = [f["name"] for f in files if f["kind"] == "snapshot"]
    assert len(snaps) >= 2, snaps
    times = [int(name.rsplit("_", 1)[1][:-4]) for name in snaps]
    gaps = [(b - a) / 1000 for a, b in zip(times, times[1:])]
    assert all(abs(gap - SNAP_S) <= 1.0 for gap in gaps), gaps
    for name in snaps:
        with Image.open(root / name) as img:
            assert img.format == "JPEG" and img.size == size
            pixels = np.asarray(img.convert("RGB")).astype(int)
        centre = pixels[size[1] // 2 - 4 : size[1] // 2 + 4, size[0] // 2 - 4 : size[0] // 2 + 4]
        assert near(centre.reshape(-1, 3).mean(axis=0), colour), (name, centre.mean(axis=(0, 1)))


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    async with running_server(make_settings(
            tmp_path, idle_timeout_s=5.0, segment_seconds=2.0, write_rate_per_s=1000,
            query_rate_per_s=1000, allow_private_storage=True)) as s:
        yield s


async def stop(call: Any, room: str, resid: str, recordid: str) -> dict[str, Any]:
    data = await call("stoprecord", {"resid": resid, "appid": APPID, "roomid": room,
                                     "recordid": recordid})
    assert data["code"] == 0, data
    return dict(data)


# -- end to end -----------------------------------------------------------------------------


async def test_source_recording_with_mp4_and_snapshots(server: Server) -> None:
    """A source recording asks for an MP4 and a snapshot every 5 s: the MP4 has the HLS's
    tracks and duration with moov first; the snapshots are the publisher's colour, 5 s apart;
    stoprecord, queryrecord and the recording.stopped callback list the same files; every
    MP4 and snapshot upload is a file.uploaded event."""
    receiver = Receiver(failures=0)
    async with serving(receiver) as hook:
        pub = await publish(server, "o1", "alice", RED)
        try:
            resid = await server.apply()
            started = await startrecord(server.call, source_body(
                resid, "o1", "alice", callbackurl=hook,
                outputs={"mp4": True, "snapshotinterval": SNAP_S}))
            assert started["code"] == 0, started
            recordid = started["recordid"]
            live = await query_until(server.call, "o1", recordid,
                                     lambda a: "snapshot" in file_kinds(a),
                                     what="a snapshot listed while recording")
            assert live["code"] == 0
            assert [f["kind"] for f in live["data"]["files"]][:1] == ["playlist"]
            assert "snapshot" in {f["kind"] for f in live["data"]["files"]}
            await query_until(server.call, "o1", recordid,
                              lambda a: file_kinds(a).count("snapshot") >= 2,
                              what="two snapshots stored")
            stopped = await stop(server.call, "o1", resid, recordid)
        finally:
            await pub.stop()
        await wait_for(lambda: any(e["type"] == "recording.stopped"
                                   for e, _, _ in receiver.accepted),
                       timeout=10, interval=0.1, what="the recording.stopped callback")
    root = server.storage_root()
    base = f"{APPID}_o1_{recordid}_alice"
    files = stopped["files"]
    check_files(files, root, base, snapshots=2, mp4=True)
    playlist = root / PREFIX / f"{base}.m3u8"
    duration = check_mp4(root / PREFIX / f"{base}.mp4", playlist, ["audio", "video"])
    assert next(f for f in files if f["kind"] == "mp4")["duration"] == pytest.approx(
        duration, abs=0.2)
    check_snapshots(files, root, RED, (160, 120))
    after = await server.call(f"queryrecord/o1/{recordid}")
    assert after["code"] == 4013 and after["data"]["files"] == files
    events = [e for e, _, _ in receiver.accepted]
    closing = next(e for e in events if e["type"] == "recording.stopped")
    assert closing["data"]["files"] == files
    uploaded = {e["data"]["file"]: e["data"]["kind"] for e in events
                if e["type"] == "file.uploaded"}
    assert uploaded[f"{PREFIX}{base}.mp4"] == "mp4"
    assert {n for n, k in uploaded.items() if k == "snapshot"} == {
        f["name"] for f in files if f["kind"] == "snapshot"}
    assert not list(server.settings.data_dir.glob(f"spool/{recordid}")), "the spool is emptied"


async def test_without_outputs_nothing_more_is_made(server: Server) -> None:
    pub = await publish(server, "o2", "bob", GREEN)
    try:
        resid = await server.apply()
        started = await startrecord(server.call, source_body(resid, "o2", "bob"))
        assert started["code"] == 0, started
        playlist = server.storage_root() / PREFIX / f"{APPID}_o2_{started['recordid']}_bob.m3u8"
        await wait_for(lambda: segments_in(playlist), what="a segment stored")
        stopped = await stop(server.call, "o2", resid, started["recordid"])
    finally:
        await pub.stop()
    base = f"{APPID}_o2_{started['recordid']}_bob"
    check_files(stopped["files"], server.storage_root(), base, snapshots=0, mp4=False)
    stored = sorted(p.suffix for p in (server.storage_root() / PREFIX).iterdir())
    assert set(stored) == {".m3u8", ".ts"}


async def test_mixed_recording_snapshots_the_canvas_and_makes_an_mp4(server: Server) -> None:
    """A mix's snapshots are its canvas (template 1 of one blue publisher fills it) taken in
    the mix's process; its MP4 is remuxed from the mix's segments."""
    pub = await publish(server, "o3", "carol", BLUE)
    try:
        resid = await server.apply()
        body = {"resid": resid, "appid": APPID, "roomid": "o3", "recordtype": 0,
                "streamtype": 1, "mixconfig": {"templateid": 1, "output": dict(OUT)},
                "storagecfg": dict(LOCAL_STORAGE),
                "outputs": {"mp4": True, "snapshotinterval": SNAP_S}}
        started = await startrecord(server.call, body)
        assert started["code"] == 0, started
        await query_until(server.call, "o3", started["recordid"],
                          lambda a: file_kinds(a).count("snapshot") >= 2,
                          what="two snapshots stored")
        stopped = await stop(server.call, "o3", resid, started["recordid"])
    finally:
        await pub.stop()
    root = server.storage_root()
    base = f"{APPID}_o3_{started['recordid']}"
    check_files(stopped["files"], root, base, snapshots=2, mp4=True)
    check_mp4(root / PREFIX / f"{base}.mp4", root / PREFIX / f"{base}.m3u8", ["audio", "video"])
    check_snapshots(stopped["files"], root, BLUE, (320, 240))


async def test_mp4_after_a_sigkill_restart(tmp_path: Path, procs: list[Proc]) -> None:  # noqa: F811
    """SIGKILL mid-recording, restart, republish, stop: the MP4 covers the segments of both
    runs (the playlist's duration), decodes, and its timestamps rise across the
    discontinuity; the stop answer lists it as stored."""
    port = free_port()
    first = Proc(tmp_path, port)
    procs.append(first)
    await first.ready()
    pub = await first.publisher("o4", "dave")
    resid = (await first.call("applyrecord", {}))["resid"]
    started = await startrecord(first.call, source_body(resid, "o4", "dave",
                                                        outputs={"mp4": True}))
    assert started["code"] == 0, started
    recordid = started["recordid"]
    root = tmp_path / "storage" / LOCAL_STORAGE["bucket"]
    base = f"{APPID}_o4_{recordid}_dave"
    playlist = root / PREFIX / f"{base}.m3u8"
    await wait_for(lambda: seconds_in(playlist) >= 2.0, what="two seconds stored")
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait()
    await pub.stop()
    before = seconds_in(playlist)

    second = Proc(tmp_path, port)
    procs.append(second)
    await second.ready()
    pub = await second.publisher("o4", "dave")
    await wait_for(lambda: seconds_in(playlist) >= before + 2.5,
                   what="2.5 s more stored after the restart")
    stopped = await stop(second.call, "o4", resid, recordid)
    await pub.stop()
    assert "#EXT-X-DISCONTINUITY" in playlist_lines(playlist)
    check_files(stopped["files"], root, base, snapshots=0, mp4=True)
    duration = check_mp4(root / PREFIX / f"{base}.mp4", playlist, ["audio", "video"])
    assert duration > 4.5, "both runs are in the MP4"


async def test_large_mp4_goes_up_to_s3_in_parts(moto: Moto, tmp_path: Path,  # noqa: F811
                                                monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """On S3 an MP4 above the multipart threshold (lowered here, with moto's minimum part
    size, so a short recording crosses it) is stored as a multipart upload. The segments'
    links in the spool are removed first, as on a node that resumed the task: the MP4 is then
    made from segments fetched back from the bucket."""
    import moto.s3.models as moto_s3

    import cloudrec.storage.s3 as s3

    caplog.set_level(logging.INFO, logger="cloudrec.recorder.outputs")
    monkeypatch.setattr(s3, "MULTIPART_THRESHOLD", PART)
    monkeypatch.setattr(s3, "PART_SIZE", PART)
    monkeypatch.setattr(moto_s3, "S3_UPLOAD_PART_MIN_SIZE", 1)
    async with running_server(make_settings(
            tmp_path, idle_timeout_s=10.0, segment_seconds=1.0, write_rate_per_s=1000,
            query_rate_per_s=1000, stop_timeout_s=20.0, allow_private_storage=True)) as server:
        pub = await publish_pattern(server, "o5", "erin")
        try:
            resid = await server.apply()
            body = source_body(resid, "o5", "erin", outputs={"mp4": True})
            body["storagecfg"] = moto.storagecfg(100)
            started = await startrecord(server.call, body)
            assert started["code"] == 0, started
            recordid = started["recordid"]
            links = server.settings.data_dir / "spool" / recordid / "mp4"

            def linked() -> bool:  # enough segments for an MP4 of more than two parts
                sizes = [p.stat().st_size for p in links.glob("*.ts")]
                return len(sizes) >= 3 and sum(sizes) > 3 * PART

            await wait_for(linked, what="segments linked for the MP4")
            shutil.rmtree(server.settings.data_dir / "spool" / recordid / "mp4")
            stopped = await stop(server.call, "o5", resid, recordid)
        finally:
            await pub.stop()
    base = f"{APPID}_o5_{recordid}_erin"
    made = [r.getMessage() for r in caplog.records if "MP4 of" in r.getMessage()]
    fetched = re.search(r"\((\d+) fetched back", made[0]) if made else None
    assert fetched and int(fetched.group(1)) >= 2, made
    mp4 = next(f for f in stopped["files"] if f["kind"] == "mp4")
    assert mp4["stored"] and mp4["size"] > 2 * PART, mp4
    client = moto.client()
    got = await asyncio.to_thread(client.get_object, Bucket="rec-s3", Key=f"{PREFIX}{base}.mp4")
    assert got["ContentType"] == "video/mp4"
    assert re.fullmatch(r"[0-9a-f]{32}-\d+", got["ETag"].strip('"')), got["ETag"]
    assert int(got["ETag"].strip('"').split("-")[1]) >= 2
    local = tmp_path / "got"
    (local / PREFIX).mkdir(parents=True)
    (local / PREFIX / f"{base}.mp4").write_bytes(got["Body"].read())
    (local / PREFIX / f"{base}.m3u8").write_bytes(client.get_object(
        Bucket="rec-s3", Key=f"{PREFIX}{base}.m3u8")["Body"].read())
    check_mp4(local / PREFIX / f"{base}.mp4", local / PREFIX / f"{base}.m3u8",
              ["audio", "video"])


async def test_mp4_across_a_pause(server: Server) -> None:
    """A recording paused and resumed: the MP4 covers both runs, with the HLS's duration (the
    paused time is in neither) and timestamps that only rise."""
    pub = await publish(server, "o5", "carol", RED)
    try:
        resid = await server.apply()
        started = await startrecord(server.call, source_body(resid, "o5", "carol",
                                                             outputs={"mp4": True}))
        assert started["code"] == 0, started
        recordid = started["recordid"]
        ids = {"resid": resid, "appid": APPID, "roomid": "o5", "recordid": recordid}
        await asyncio.sleep(3.0)
        assert (await server.call("pauserecord", ids))["code"] == 0
        await asyncio.sleep(3.0)
        assert (await server.call("resumerecord", ids))["code"] == 0
        await asyncio.sleep(3.0)
        await stop(server.call, "o5", resid, recordid)
    finally:
        await pub.stop()
    root = server.storage_root()
    base = f"{APPID}_o5_{recordid}_carol"
    playlist = root / PREFIX / f"{base}.m3u8"
    assert "#EXT-X-DISCONTINUITY" in playlist_lines(playlist)
    duration = check_mp4(root / PREFIX / f"{base}.mp4", playlist, ["audio", "video"])
    assert 4.5 < duration < 7.5, duration  # 9 s of wall time, 3 of them paused
