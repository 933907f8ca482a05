"""Mixed-stream recording: the recorder on its own (fed encoded frames, as fast as possible), and
end to end (real WebRTC publishers over loopback → cloudrec → HLS in local storage, decoded back
with PyAV and checked by pixels, SEI NAL units and the audio spectrum).

Publishers send solid colours: a :class:`SolidPattern` stands in for the synthetic publisher's
test pattern, so each input's colour can be found at its rect's centre in the output.
"""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import time
from collections.abc import AsyncIterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from cloudrec.media.mix.layout import Rect, template_rects
from cloudrec.media.mix.recorder import MixedHlsRecorder
from cloudrec.media.mix.sei import find_sei_payloads
from cloudrec.mediatypes import EncodedFrame
from cloudrec.models.mixconfig import MixConfig
from cloudrec.tokens import make_token
from cloudrec.webrtc.synthetic import TestPatternTrack
from cloudrec.webrtc.whip_client import Publisher
from tests.e2e.test_restart import Proc, procs  # noqa: F401 (a fixture)
from tests.helpers import (
    APPID,
    LOCAL_STORAGE,
    SECRET,
    SEED_START_MIXED,
    Server,
    free_port,
    make_settings,
    query_until,
    running_server,
    segments_in,
    startrecord,
    wait_for,
)
from tests.media_check import ffprobe_streams, playlist_lines, probe_playlist

RED, GREEN, BLUE, YELLOW = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)
WHITE, BLACK = (255, 255, 255), (0, 0, 0)
TOL = 40  # two lossy encodes (the publisher's and the mix's) and two YUV round trips
OUT = {"streamtype": 0, "videowidth": 320, "videoheight": 240, "videobitrate": 500,
       "videofps": 15, "videogop": 30}
SEI = "Y2xvdWRyZWMgbWl4IOS4reaWhw=="  # "cloudrec mix 中文"


# -- helpers --------------------------------------------------------------------------------


class SolidPattern:
    """A :class:`~cloudrec.webrtc.synthetic.TestPattern` stand-in: every frame one solid colour."""

    def __init__(self, rgb: tuple[int, int, int], width: int, height: int) -> None:
        img = np.empty((height, width, 3), np.uint8)
        img[...] = rgb
        frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
        self._planes = frame.to_ndarray()

    def frame(self, index: int, fps: int) -> av.VideoFrame:
        return av.VideoFrame.from_ndarray(self._planes, format="yuv420p")


async def publish(server: Server | Proc, room: str, uid: str, colour: tuple[int, int, int],
                  tone_hz: float = 440.0, width: int = 160, height: int = 120) -> Publisher:
    pub = Publisher(f"{server.base}/whip/{APPID}/{room}/{uid}",
                    make_token(APPID, room, uid, SECRET), width=width, height=height,
                    tone_hz=tone_hz)
    for track in pub._tracks:
        if isinstance(track, TestPatternTrack):
            track._pattern = SolidPattern(colour, width, height)  # type: ignore[assignment]
    await pub.start()
    await pub.wait_connected()
    return pub


def mixed_body(resid: str, roomid: str, mixconfig: dict[str, Any], recordtype: int = 0
               ) -> dict[str, Any]:
    return {"resid": resid, "appid": APPID, "roomid": roomid, "recordtype": recordtype,
            "streamtype": 1, "mixconfig": mixconfig, "storagecfg": dict(LOCAL_STORAGE)}


async def start_mixed(server: Server, roomid: str, mixconfig: dict[str, Any],
                      recordtype: int = 0) -> tuple[str, str]:
    resid = await server.apply()
    data = await startrecord(server.call, mixed_body(resid, roomid, mixconfig, recordtype))
    assert data["code"] == 0, data
    return resid, str(data["recordid"])


async def stop(server: Server, roomid: str, resid: str, recordid: str) -> None:
    data = await server.call("stoprecord", {"resid": resid, "appid": APPID, "roomid": roomid,
                                            "recordid": recordid})
    assert data["code"] == 0, data


def playlist_of(server: Server, roomid: str, recordid: str) -> Path:
    return server.storage_root() / "test1" / "test2" / f"{APPID}_{roomid}_{recordid}.m3u8"


def video_frames(playlist: Path) -> list[tuple[float, np.ndarray]]:
    """(pts in seconds, RGB picture) of every video frame of a recording."""
    with av.open(str(playlist)) as container:
        return [(float(f.pts * f.time_base), f.to_ndarray(format="rgb24").astype(int))
                for f in container.decode(video=0)]


def near(pixel: np.ndarray, colour: tuple[int, int, int], tol: int = TOL) -> bool:
    return bool(np.abs(pixel - np.array(colour)).max() <= tol)


def at(img: np.ndarray, point: tuple[int, int]) -> np.ndarray:
    x, y = point
    return img[y - 2 : y + 3, x - 2 : x + 3].reshape(-1, 3).mean(axis=0)  # a 5x5 average


def audio_peaks(playlist: Path, freqs: list[float]) -> dict[float, float]:
    """How far each frequency stands out of the output audio's spectrum (peak / median)."""
    with av.open(str(playlist)) as container:
        left = np.concatenate([f.to_ndarray()[0] for f in container.decode(audio=0)])
    left = left[len(left) // 4 :]  # past the start, where inputs may still be joining
    spectrum = np.abs(np.fft.rfft(left * np.hanning(len(left))))
    bins = np.fft.rfftfreq(len(left), 1 / 48000)
    floor = float(np.median(spectrum)) + 1e-9
    return {f: float(spectrum[np.abs(bins - f) < 5].max()) / floor for f in freqs}


def sei_payloads(playlist: Path) -> tuple[int, int]:
    """(video packets carrying our SEI payload, video packets)."""
    with av.open(str(playlist)) as container:
        packets = [bytes(p) for p in container.demux(video=0) if p.size]
    expected = base64.b64decode(SEI)
    return sum(find_sei_payloads(p) == [expected] for p in packets), len(packets)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    async with running_server(make_settings(tmp_path, idle_timeout_s=3.0, segment_seconds=1.0,
                                            write_rate_per_s=1000, query_rate_per_s=1000)) as s:
        yield s


@pytest.fixture(autouse=True)
def _thread_worker_where_a_stall_is_injected(request: pytest.FixtureRequest,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """test_a_worker_far_behind_drops_frames_and_recovers stalls the worker by monkeypatching
    MixedHlsRecorder.tick in this process, which only the in-thread worker runs: it keeps that
    transport. The mix process (the default) is stalled with a real SIGSTOP in
    tests/e2e/test_mixproc.py."""
    if request.node.name == "test_a_worker_far_behind_drops_frames_and_recovers":
        monkeypatch.setattr("cloudrec.recorder.mixed.MIX_WORKER", "thread")


# -- the recorder on its own ----------------------------------------------------------------


def _h264(colour: tuple[int, int, int], n: int, fps: int = 15, w: int = 160, h: int = 120
          ) -> list[EncodedFrame]:
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt = w, h, "yuv420p"
    enc.time_base, enc.framerate, enc.gop_size = Fraction(1, fps), Fraction(fps), fps
    enc.options = {"preset": "ultrafast", "tune": "zerolatency", "x264-params": "repeat-headers=1"}
    pattern = SolidPattern(colour, w, h)
    out = []
    for i in range(n):
        frame = pattern.frame(i, fps)
        frame.pts = i
        for p in enc.encode(frame):
            ts = int(p.pts) * 90000 // fps
            out.append(EncodedFrame("video", "h264", bytes(p), ts, 90000, ts / 90000,
                                    bool(p.is_keyframe), 1))
    return out


def _opus(seconds: float, tone_hz: float) -> list[EncodedFrame]:
    enc = av.CodecContext.create("libopus", "w")
    enc.sample_rate, enc.layout, enc.format = 48000, "mono", "s16"
    enc.bit_rate, enc.time_base = 32000, Fraction(1, 48000)
    out = []
    for start in range(0, int(seconds * 48000), 960):
        n = np.arange(start, start + 960)
        wave = (np.sin(2 * np.pi * tone_hz * n / 48000) * 8000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(wave.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts = 48000, start
        for p in enc.encode(frame):
            out.append(EncodedFrame("audio", "opus", bytes(p), int(p.pts), 48000,
                                    int(p.pts) / 48000, False, 1))
    return out


def _config(**kw: Any) -> MixConfig:
    return MixConfig.model_validate_json(json.dumps(kw))


def test_recorder_cuts_segments_on_time_and_updates_in_one_playlist(tmp_path: Path) -> None:
    """Offline: 1 s segments to the frame; a layout update keeps the encoder; a new size opens
    a new one behind #EXT-X-DISCONTINUITY; PTS run on without a gap."""
    segments = []
    rec = MixedHlsRecorder(tmp_path, "10034_r_x", _config(templateid=1, output=OUT), "r",
                           segment_seconds=1.0, on_segment=segments.append)
    rec.set_publishers(["a", "b"])
    frames = {("r", "a"): _h264(RED, 90), ("r", "b"): _h264(BLUE, 90)}
    sound = {("r", "a"): _opus(6.0, 440), ("r", "b"): _opus(6.0, 1000)}
    for n in range(90):
        for key, clip in frames.items():
            rec.push(key, clip[n])
            for packet in sound[key]:
                if n / 15 <= packet.arrival < (n + 1) / 15:
                    rec.push(key, packet)
        if n == 30:  # template 1 → 2: same encoder
            rec.update(_config(templateid=2, output=OUT))
        if n == 60:  # a new size: a new encoder, a new segment
            rec.update(_config(templateid=2, output=dict(OUT, videowidth=240, videoheight=180)))
        rec.advance_to(n * 6000)
    rec.close()
    lines = playlist_lines(rec.playlist_path)
    assert lines.count("#EXT-X-DISCONTINUITY") == 1 and lines[-1] == "#EXT-X-ENDLIST"
    assert [s.duration for s in segments] == [1.0] * 6
    assert [s.discontinuity for s in segments] == [False] * 4 + [True, False]
    assert rec.stats.encoders == ["aac", "libx264"] and rec.stats.frames_out == 90
    with av.open(str(rec.playlist_path)) as container:  # audio runs on across the switch
        audio = [float(f.pts * f.time_base) for f in container.decode(audio=0)]
    assert np.allclose(np.diff(audio), 1024 / 48000, atol=1e-4) and audio[-1] > 5.8
    decoded = video_frames(rec.playlist_path)
    pts = [t for t, _ in decoded]
    assert len(pts) == 90 and np.allclose(np.diff(pts), 1 / 15, atol=1e-3)
    assert near(at(decoded[25][1], (240, 60)), BLUE)  # template 1: b on the right
    assert near(at(decoded[45][1], (240, 60)), RED)  # template 2: a on top
    assert decoded[75][1].shape == (180, 240, 3) and near(at(decoded[75][1], (180, 135)), BLUE)


def test_recorder_keeps_real_time_when_the_caller_falls_behind(tmp_path: Path) -> None:
    rec = MixedHlsRecorder(tmp_path, "10034_r_y", _config(templateid=3, output=OUT), "r",
                           audio=False, segment_seconds=1.0)
    rec.set_publishers(["a"])
    rec.push(("r", "a"), _h264(GREEN, 1)[0])
    rec.tick(100.0)
    assert rec.tick(100.2) == 3  # 0.2 s: three frames at 15 fps, rendered to catch up
    assert rec.tick(102.2) == 1  # 2 s behind: the missed frames are dropped, not rendered
    assert rec.stats.frames_skipped == 29
    rec.close()
    pts = [t for t, _ in video_frames(rec.playlist_path)]
    assert len(pts) == 5 and abs(pts[-1] - pts[0] - 2.2) < 0.07
    with av.open(str(rec.playlist_path)) as container:  # recordtype 1: video only
        assert not container.streams.audio


# -- end to end -----------------------------------------------------------------------------


async def test_template_layouts_sei_and_reflow(server: Server) -> None:
    """Templates 1 and 3 over one room of three publishers (joined red, green, blue): each
    colour at its slot's centre, the SEI in every frame, and a re-flow when green leaves."""
    room = "tpl"
    red = await publish(server, room, "r", RED)
    green = await publish(server, room, "g", GREEN)
    blue = await publish(server, room, "b", BLUE)
    pubs = [red, green, blue]
    try:
        started = [await start_mixed(server, room, {"templateid": t, "output": dict(
            OUT, base64seidata=SEI, background={"color": "FFFF00"})}) for t in (1, 3)]
        for _resid, recordid in started:
            await query_until(
                server.call, room, recordid,
                lambda a: len(a["data"].get("inputs") or []) == 3 and a["data"]["segments"] >= 2,
                what="two segments of the three inputs")
        live = await server.call(f"queryrecord/{room}/{started[0][1]}")
        assert live["code"] == 0 and live["data"]["status"] == 2
        assert live["data"]["inputs"] == [f"{room}/b", f"{room}/g", f"{room}/r"]
        left = time.monotonic()
        await green.stop()
        await asyncio.sleep(2.0)
        since_left = []  # how long before each recording's end green left (a loaded box
        for resid, recordid in started:  # takes a while to stop the first)
            await stop(server, room, resid, recordid)
            since_left.append(time.monotonic() - left)
    finally:
        for pub in pubs:
            await pub.stop()
    for (_resid, recordid), templateid, gone in zip(started, (1, 3), since_left):
        playlist = playlist_of(server, room, recordid)
        frames = video_frames(playlist)
        assert frames[0][1].shape == (240, 320, 3)
        t_end = frames[-1][0]  # its last frame was made before the stop returned, so every
        before = [img for t, img in frames  # frame before t_end - gone was made before green left
                  if t_end - gone - 1.0 < t < t_end - gone - 0.3]  # all three
        after = [img for t, img in frames if t > t_end - 0.8]  # green has left
        assert before and after
        for img in (before[-1],):
            for rect, colour in zip(template_rects(templateid, 3, 320, 240), (RED, GREEN, BLUE)):
                assert near(at(img, rect.center), colour), (templateid, rect, at(img, rect.center))
        for rect, colour in zip(template_rects(templateid, 2, 320, 240), (RED, BLUE)):
            assert near(at(after[-1], rect.center), colour), (templateid, rect)
        if templateid == 3:  # the 2x2 grid's empty bottom-right cell shows the background
            assert near(at(before[-1], (300, 220)), YELLOW)
        carrying, total = sei_payloads(playlist)
        assert total == len(frames) and carrying == total


async def test_custom_layout_z_order_watermark_background_and_patch(server: Server) -> None:
    """Inputs from two rooms: zOrder decides the overlap, the background shows where no
    input is, a text watermark is drawn, a picture that cannot be fetched is left out (and
    reported), and when an input leaves its rect is patched black (patch 1)."""
    a = await publish(server, "roomA", "a", RED, tone_hz=440)
    b = await publish(server, "roomB", "b", BLUE, tone_hz=1000)
    pubs = [a, b]
    layout = {
        "input": [
            {"uid": "b", "roomid": "roomB", "streamtype": 0, "zOrder": 2, "layoutX": 120,
             "layoutY": 0, "layoutW": 160, "layoutH": 160, "crop": 1},
            {"uid": "a", "roomid": "roomA", "streamtype": 0, "zOrder": 1, "layoutX": 0,
             "layoutY": 0, "layoutW": 200, "layoutH": 240, "crop": 1},
        ],
        "output": dict(OUT, patch=1, background={"color": "00FF00"}, watermark={
            "textList": [{"x": 10, "y": 180, "content": "REC 中文", "size": 28,
                          "color": "FFFFFF", "backgroundColor": "000000"}],
            "imageList": [{"x": 0, "y": 0, "width": 32, "height": 32, "scale": 0,
                           "url": "http://127.0.0.1:9/logo.png"}]}),
    }
    try:
        resid, recordid = await start_mixed(server, "roomA", layout)
        live = await query_until(
            server.call, "roomA", recordid,
            lambda a: len(a["data"].get("inputs") or []) == 2 and a["data"]["segments"] >= 2
            and any("127.0.0.1:9/logo.png" in w for w in a["data"]["warnings"]),
            what="two segments of both inputs, the picture's warning")
        await b.stop()
        await asyncio.sleep(1.5)
        await stop(server, "roomA", resid, recordid)
    finally:
        for pub in pubs:
            await pub.stop()
    assert any("127.0.0.1:9/logo.png" in w for w in live["data"]["warnings"])
    playlist = playlist_of(server, "roomA", recordid)
    frames = video_frames(playlist)
    t_end = frames[-1][0]
    both = [img for t, img in frames if t_end - 2.6 < t < t_end - 1.6][-1]
    assert near(at(both, (60, 60)), RED)  # a alone
    assert near(at(both, (160, 60)), BLUE)  # the overlap: b has the higher zOrder
    assert near(at(both, (260, 60)), BLUE)  # b alone
    assert near(at(both, (260, 210)), GREEN)  # no input here: the background colour
    assert near(at(both, (4, 4)), RED)  # the unreadable image watermark is left out
    box = both[182:208, 12:80]  # the text watermark: white glyphs on its black box
    assert (np.abs(box - np.array(WHITE)).max(axis=2) < 60).sum() > 40
    assert (np.abs(box - np.array(BLACK)).max(axis=2) < 60).sum() > 200
    assert not near(at(both, (40, 195)), RED)
    gone = [img for t, img in frames if t > t_end - 0.5][-1]
    assert near(at(gone, (160, 60)), BLACK) and near(at(gone, (260, 60)), BLACK)  # patch 1
    assert near(at(gone, (60, 60)), RED) and near(at(gone, (260, 210)), GREEN)
    peaks = audio_peaks(playlist, [440.0, 1000.0])
    assert peaks[440.0] > 50 and peaks[1000.0] > 50, peaks


async def test_update_changes_layout_without_a_gap(server: Server) -> None:
    room = "upd"
    pubs = [await publish(server, room, "a", RED), await publish(server, room, "b", BLUE)]
    try:
        resid, recordid = await start_mixed(server, room, {"templateid": 1, "output": OUT})
        at_update = await query_until(
            server.call, room, recordid,
            lambda a: len(a["data"].get("inputs") or []) == 2 and a["data"]["segments"] >= 2,
            what="two segments of both inputs")
        body = {"resid": resid, "appid": APPID, "roomid": room, "recordid": recordid}
        swapped = {"input": [
            {"uid": "a", "roomid": room, "streamtype": 0, "layoutX": 160, "layoutY": 0,
             "layoutW": 160, "layoutH": 240, "crop": 1},
            {"uid": "b", "roomid": room, "streamtype": 0, "layoutX": 0, "layoutY": 0,
             "layoutW": 160, "layoutH": 240, "crop": 1}], "output": OUT}
        t_update = time.monotonic()
        data = await server.call("updatemixrecord", dict(body, mixconfig=swapped))
        assert data["code"] == 0, data
        audio_only = dict(body, mixconfig={"output": {"streamtype": 2}})
        refused = await server.call("updatemixrecord", audio_only)
        assert refused["code"] == 4016 and "streamtype" in refused["message"]
        live = await query_until(
            server.call, room, recordid,
            lambda a: a["data"]["segments"] >= at_update["data"]["segments"] + 2,
            what="two segments after the update")
        assert live["data"]["mixconfig"]["input"][0]["layoutX"] == 160  # kept for a restart
        await stop(server, room, resid, recordid)
        t_stop = time.monotonic()
    finally:
        for pub in pubs:
            await pub.stop()
    playlist = playlist_of(server, room, recordid)
    lines = playlist_lines(playlist)
    assert "#EXT-X-DISCONTINUITY" not in lines and lines[-1] == "#EXT-X-ENDLIST"
    assert len(list(playlist.parent.glob(f"*{recordid}*.m3u8"))) == 1
    frames = video_frames(playlist)
    pts = np.array([t for t, _ in frames])
    assert np.all(np.diff(pts) > 0) and np.diff(pts).max() < 0.25  # continuous
    left = [RED if near(at(img, (80, 120)), RED) else BLUE if near(at(img, (80, 120)), BLUE)
            else None for _, img in frames]
    changes = [i for i in range(1, len(left)) if left[i] != left[i - 1] and left[i - 1]]
    assert left[-1] == BLUE and len(changes) == 1 and left[changes[0] - 1] == RED
    # the change lies where the update was made, measured back from the end of the recording
    t_change = pts[-1] - pts[changes[0]]
    assert abs(t_change - (t_stop - t_update)) < 1.0, (t_change, t_stop - t_update)


async def test_audio_only_mix_of_the_room(server: Server) -> None:
    """recordtype 2, no input list: every publisher's audio, no video stream at all."""
    room = "aud"
    pubs = [await publish(server, room, "a", RED, tone_hz=440),
            await publish(server, room, "b", BLUE, tone_hz=1000)]
    try:
        resid, recordid = await start_mixed(server, room, {"output": {"streamtype": 2}}, 2)
        await query_until(server.call, room, recordid,
                          lambda a: len(a["data"].get("inputs") or []) == 2
                          and a["data"]["duration"] >= 3.0,
                          what="3 s of both inputs recorded")
        await stop(server, room, resid, recordid)
    finally:
        for pub in pubs:
            await pub.stop()
    playlist = playlist_of(server, room, recordid)
    probe = probe_playlist(playlist)
    assert probe.video_frames == 0 and probe.video_codec is None
    assert probe.audio_codec == "aac" and probe.audio_rate == 48000 and probe.duration > 2.5
    streams = ffprobe_streams(playlist)
    if streams is not None:
        assert [s["codec_type"] for s in streams] == ["audio"]
        assert streams[0]["channels"] == 2
    peaks = audio_peaks(playlist, [440.0, 1000.0])
    assert peaks[440.0] > 50 and peaks[1000.0] > 50, peaks


async def test_seed_mixed_example_records(server: Server) -> None:
    """The seed's mixed startrecord now records (code 0, was 4004): one of its two rooms
    publishing is enough; the other input is drawn as nothing until it comes."""
    pub = await publish(server, "abcabc", "10266666", RED)
    try:
        body = json.loads(json.dumps(SEED_START_MIXED))
        body["resid"], body["storagecfg"] = await server.apply(), dict(LOCAL_STORAGE)
        nobody = dict(body, mixconfig=dict(body["mixconfig"], input=[
            dict(i, roomid="empty") for i in body["mixconfig"]["input"]]))
        assert (await server.call("startrecord", nobody))["code"] == 4005
        data = await server.call("startrecord", body)
        assert data["code"] == 0, data
        await wait_for(lambda: segments_in(playlist_of(server, "abcabc", data["recordid"])),
                       what="a segment stored")
        await stop(server, "abcabc", body["resid"], data["recordid"])
    finally:
        await pub.stop()
    probe = probe_playlist(playlist_of(server, "abcabc", data["recordid"]))
    assert (probe.width, probe.height, probe.video_codec) == (800, 600, "h264")
    assert probe.audio_codec == "aac"
    img = video_frames(playlist_of(server, "abcabc", data["recordid"]))[-1][1]
    assert near(at(img, Rect(0, 0, 400, 600).center), RED)


async def test_sigkill_resumes_the_mix_with_its_latest_layout(
    tmp_path: Path, procs: list[Proc]  # noqa: F811
) -> None:
    """A restart resumes a mixed task into the same playlist (after #EXT-X-DISCONTINUITY) with
    the layout of its latest updatemixrecord."""
    port, room = free_port(), "rst"
    first = Proc(tmp_path, port)
    procs.append(first)
    await first.ready()
    pubs = [await publish(first, room, "a", RED), await publish(first, room, "b", BLUE)]
    resid = (await first.call("applyrecord", {}))["resid"]
    data = await first.call("startrecord", mixed_body(resid, room, {"templateid": 1,
                                                                    "output": OUT}))
    assert data["code"] == 0, data
    recordid = data["recordid"]
    playlist = (tmp_path / "storage" / LOCAL_STORAGE["bucket"] / "test1" / "test2"
                / f"{APPID}_{room}_{recordid}.m3u8")
    await wait_for(lambda: segments_in(playlist), what="a segment stored")
    body = {"resid": resid, "appid": APPID, "roomid": room, "recordid": recordid}
    update = await first.call("updatemixrecord", dict(body, mixconfig={"templateid": 2,
                                                                       "output": OUT}))
    assert update["code"] == 0, update
    at_update = len(segments_in(playlist))
    await wait_for(lambda: len(segments_in(playlist)) >= max(2, at_update + 1),
                   what="a segment stored after the update")
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait()
    for pub in pubs:
        await pub.stop()
    before = [line for line in playlist_lines(playlist) if line.endswith(".ts")]
    assert len(before) >= 2

    second = Proc(tmp_path, port)
    procs.append(second)
    await second.ready()
    resumed = await second.call(f"queryrecord/{room}/{recordid}")
    assert resumed["code"] == 0 and resumed["data"]["mixconfig"]["templateid"] == 2, resumed
    pubs = [await publish(second, room, "a", RED), await publish(second, room, "b", BLUE)]
    await query_until(second.call, room, recordid,
                      lambda a: len(a["data"].get("inputs") or []) == 2
                      and a["data"]["segments"] >= len(before) + 2,
                      what="two segments of both inputs after the restart")
    stopped = await second.call("stoprecord", body)
    for pub in pubs:
        await pub.stop()
    assert stopped["code"] == 0, stopped
    lines = playlist_lines(playlist)
    after = [line for line in lines if line.endswith(".ts")]
    assert after[: len(before)] == before and len(after) > len(before)
    assert "#EXT-X-DISCONTINUITY" in lines and lines[-1] == "#EXT-X-ENDLIST"
    frames = video_frames(playlist)
    assert np.all(np.diff([t for t, _ in frames]) > 0)
    last = frames[-1][1]
    assert near(at(last, (160, 60)), RED) and near(at(last, (160, 180)), BLUE)  # template 2


async def test_a_worker_far_behind_drops_frames_and_recovers(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker stalled for a second (a fault injected around the real tick) falls behind: the
    loop drops frames before the worker instead of queueing them without limit, the input
    resyncs on a keyframe, and the recording goes on whole."""
    import cloudrec.recorder.mixed as mixed_recorder
    from cloudrec.media.mix.recorder import MixedHlsRecorder

    monkeypatch.setattr(mixed_recorder, "MAX_BACKLOG", 5)
    real_tick = MixedHlsRecorder.tick
    stall_until: list[float] = []

    def stalling_tick(self: MixedHlsRecorder, now: float) -> int:
        if self.started and not stall_until:
            stall_until.append(now + 1.0)
        if stall_until and now < stall_until[0]:
            time.sleep(0.3)
        return real_tick(self, now)

    monkeypatch.setattr(MixedHlsRecorder, "tick", stalling_tick)
    room = "slow"
    red = await publish(server, room, "r", RED)
    try:
        resid, recordid = await start_mixed(server, room, {"templateid": 1, "output": OUT})
        dropped = await query_until(server.call, room, recordid,
                                    lambda a: a["data"].get("framesdropped", 0) > 0,
                                    what="frames dropped")
        live = await query_until(
            server.call, room, recordid,
            lambda a: a["data"]["segments"] >= dropped["data"]["segments"] + 2,
            what="two segments after the drop")
        await stop(server, room, resid, recordid)
    finally:
        await red.stop()
    assert live["code"] == 0 and live["data"]["framesdropped"] > 0
    frames = video_frames(playlist_of(server, room, recordid))
    assert frames and near(at(frames[-1][1], (160, 120)), RED)
