"""pauserecord / resumerecord and the live push of a mix (``outputs.pushurl``), end to end:
real WHIP publishers over loopback → cloudrec → HLS in local storage, read back with PyAV; the
push goes to a real RTMP server on loopback (Debian's ``ffmpeg`` in listen mode, which is also
the reader: it writes what it receives into an MPEG-TS file that PyAV decodes)."""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, AsyncIterator

import av
import numpy as np
import pytest

from cloudrec.media.hls import SegmentInfo
from cloudrec.media.mix.recorder import MixedHlsRecorder
from cloudrec.media.push.fanout import push_protocols
from cloudrec.media.source import SourceHlsRecorder
from cloudrec.models.mixconfig import MixConfig
from tests.e2e.test_mixed import OUT, RED, mixed_body, publish
from tests.e2e.test_mixed import _h264 as mix_h264
from tests.e2e.test_mixed import _opus as mix_opus
from tests.e2e.test_restart import Proc, procs, start_recording, stored_playlist  # noqa: F401
from tests.helpers import (
    APPID,
    Server,
    free_port,
    make_settings,
    query_until,
    running_server,
    segments_in,
    source_body,
    startrecord,
)
from tests.media_check import playlist_lines, probe_playlist
from tests.unit.test_media_source import T0, FakeClock
from tests.unit.test_media_source import publish as synthetic_publisher


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    async with running_server(make_settings(tmp_path, idle_timeout_s=3.0, segment_seconds=2.0,
                                            write_rate_per_s=1000, query_rate_per_s=1000,
                                            pause_timeout_s=600.0)) as s:
        yield s


def ids(resid: str, roomid: str, recordid: str) -> dict[str, Any]:
    return {"resid": resid, "appid": APPID, "roomid": roomid, "recordid": recordid}


async def query(server: Server | Proc, roomid: str, recordid: str) -> dict[str, Any]:
    return await server.call(f"queryrecord/{roomid}/{recordid}")


def pts_jumps(playlist: Path) -> list[float]:
    """Every step between consecutive video frames' PTS, in seconds, across the recording."""
    with av.open(str(playlist)) as container:
        stream = container.streams.video[0]
        times = sorted(float(p.pts * p.time_base) for p in container.demux(stream)
                       if p.pts is not None)
    return [b - a for a, b in zip(times, times[1:])]


# -- pause and resume: the recorders on their own (no sleeping) ---------------------------------


def test_source_recorder_pause_and_resume_leave_no_gap(tmp_path: Path) -> None:
    """A publisher sends 9 s; the recording is paused from 3 s to 6 s of it: 6 s recorded,
    the segment open at the pause closed then, the next after #EXT-X-DISCONTINUITY, and
    timestamps that run on across the pause."""
    clock = FakeClock()
    rec = SourceHlsRecorder(tmp_path, "10034_r_rec_u", audio=True, video=True, clock=clock,
                            segment_seconds=2.0)
    state = "recording"
    closed_at_pause = 0
    for frame in synthetic_publisher(9.0):
        clock.now = frame.arrival
        t = frame.arrival - T0
        if state == "recording" and t >= 3.0:
            rec.pause(frame.arrival)
            state, closed_at_pause = "paused", len(rec.segments)
            assert not list(tmp_path.glob("*.part")), "the open segment is closed at once"
        elif state == "paused" and t >= 6.0:
            assert len(rec.segments) == closed_at_pause, "nothing is written while paused"
            rec.resume(frame.arrival)
            state = "resumed"
        if state != "paused":
            rec.push(frame)
    rec.close()
    after = rec.segments[closed_at_pause:]
    assert after and after[0].discontinuity and not any(s.discontinuity for s in after[1:])
    assert abs(sum(s.duration for s in rec.segments) - 6.0) < 0.3
    with av.open(str(rec.playlist_path)) as container:
        video = [float(f.pts * f.time_base) for f in container.decode(video=0)]
    with av.open(str(rec.playlist_path)) as container:
        audio = [float(f.pts * f.time_base) for f in container.decode(audio=0)]
    # at most a frame or two around the pause, where each track re-anchors on arrival
    assert max(b - a for a, b in zip(video, video[1:])) < 0.2
    assert max(b - a for a, b in zip(audio, audio[1:])) < 0.15
    assert abs(video[-1] - video[0] - 6.0) < 0.3


def test_mixed_recorder_pause_and_resume_leave_no_gap(tmp_path: Path) -> None:
    """A mix ticked in (simulated) real time for 9 s, paused from 3 s to 6 s."""
    segments: list[SegmentInfo] = []
    rec = MixedHlsRecorder(tmp_path, "10034_r_mix", MixConfig.model_validate(
        {"templateid": 1, "output": OUT}), "r", segment_seconds=1.0,
        on_segment=segments.append)
    rec.set_publishers(["a"])
    base = 100.0
    video = [replace(f, arrival=base + f.arrival) for f in mix_h264(RED, 135)]
    sound = [replace(f, arrival=base + f.arrival) for f in mix_opus(9.0, 440)]
    for n in range(135):
        now = base + n / 15
        if n == 45:
            rec.pause(now)
            closed_at_pause = len(segments)
        if n == 90:
            assert len(segments) == closed_at_pause and not list(tmp_path.glob("*.part"))
            rec.resume(now)
        if not rec.paused:
            rec.push(("r", "a"), video[n])
            for packet in sound:
                if now <= packet.arrival < now + 1 / 15:
                    rec.push(("r", "a"), packet)
        rec.tick(now)
    rec.close()
    assert segments[closed_at_pause].discontinuity
    assert abs(sum(s.duration for s in segments) - 6.0) < 0.3
    with av.open(str(rec.playlist_path)) as container:
        pts = [float(f.pts * f.time_base) for f in container.decode(video=0)]
    with av.open(str(rec.playlist_path)) as container:
        audio = [float(f.pts * f.time_base) for f in container.decode(audio=0)]
    assert np.allclose(np.diff(pts), 1 / 15, atol=1e-3) and 88 <= len(pts) <= 91
    assert np.allclose(np.diff(audio), 1024 / 48000, atol=1e-4)


# -- pause and resume end to end -----------------------------------------------------------------


async def test_pause_leaves_the_paused_time_out_and_answers_its_codes(server: Server) -> None:
    """5 s recording, 5 s paused (the publisher even leaves for longer than idle_timeout_s),
    5 s recording: about 10 s of media, continuous timestamps, one playlist."""
    pub = await publish(server, "room1", "alice", RED, width=320, height=240)
    resid = await server.apply()
    data = await startrecord(server.call, source_body(resid, "room1", "alice"))
    assert data["code"] == 0, data
    recordid = data["recordid"]
    try:
        await asyncio.sleep(5.0)
        paused = await server.call("pauserecord", ids(resid, "room1", recordid))
        assert paused["code"] == 0 and paused["paused"] is True, paused
        t_pause = time.monotonic()
        live = (await query(server, "room1", recordid))["data"]
        assert live["paused"] is True and abs(live["pausetime"] - time.time() * 1000) < 5000
        segments_at_pause = live["segments"]
        again = await server.call("pauserecord", ids(resid, "room1", recordid))
        assert again["code"] == 4004 and "already paused" in again["message"], again
        assert again["_status"] == 400

        await pub.stop()  # no media for longer than idle_timeout_s: a paused task stays
        await asyncio.sleep(4.0)
        pub = await publish(server, "room1", "alice", RED, width=320, height=240)
        live = await query(server, "room1", recordid)
        assert live["code"] == 0 and live["data"]["paused"] is True, live
        assert live["data"]["segments"] == segments_at_pause, "nothing is written while paused"
        await asyncio.sleep(max(0.0, 5.0 - (time.monotonic() - t_pause)))

        resumed = await server.call("resumerecord", ids(resid, "room1", recordid))
        assert resumed["code"] == 0 and resumed["paused"] is False, resumed
        assert resumed["pausedseconds"] >= 4.5
        again = await server.call("resumerecord", ids(resid, "room1", recordid))
        assert again["code"] == 4004 and "not paused" in again["message"], again
        await asyncio.sleep(5.0)
        stopped = await server.call("stoprecord", ids(resid, "room1", recordid))
        assert stopped["code"] == 0, stopped
    finally:
        await pub.stop()

    playlist = server.storage_root() / "test1" / "test2" / f"{APPID}_room1_{recordid}_alice.m3u8"
    lines = playlist_lines(playlist)
    assert lines[-1] == "#EXT-X-ENDLIST" and "#EXT-X-DISCONTINUITY" in lines
    probe = probe_playlist(playlist)
    assert 8.5 <= probe.duration <= 11.5, probe  # 15 s of wall time, 5 of them paused
    assert probe.audio_frames > 8 * 46 and probe.video_frames >= 15 * 8
    assert max(pts_jumps(playlist)) < 1.0, "the pause leaves no gap in the timestamps"

    gone = await server.call("pauserecord", ids(resid, "room1", recordid))
    assert gone["code"] == 4013 and gone["_status"] == 404


async def test_pause_and_resume_checks(server: Server) -> None:
    """Auth, 4013 for an unknown recordid, 4012 for a resid that is not the task's."""
    pub = await publish(server, "room2", "bob", RED)
    try:
        resid = await server.apply()
        data = await startrecord(server.call, source_body(resid, "room2", "bob"))
        assert data["code"] == 0, data
        recordid = data["recordid"]
        for verb in ("pauserecord", "resumerecord"):
            unknown = await server.call(verb, ids(resid, "room2", "nosuchrecord"))
            assert unknown["code"] == 4013, unknown
            other = await server.call(verb, ids(await server.apply(), "room2", recordid))
            assert other["code"] == 4012, other
            bad = await server.call(verb, {**ids(resid, "room2", recordid), "extra": 1})
            assert bad["code"] == 2101 and "extra" in bad["message"], bad
            anonymous = await server.call(verb, ids(resid, "room2", recordid),
                                          headers={"AppID": str(APPID)})
            assert anonymous["code"] == 1000, anonymous
        assert (await server.call("resumerecord", ids(resid, "room2", recordid)))["code"] == 4004
        assert (await server.call("stoprecord", ids(resid, "room2", recordid)))["code"] == 0
    finally:
        await pub.stop()


async def test_a_pause_longer_than_pause_timeout_stops_the_task(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, idle_timeout_s=30.0, segment_seconds=2.0,
                             pause_timeout_s=2.0)
    async with running_server(settings) as server:
        pub = await publish(server, "room3", "carol", RED)
        try:
            resid = await server.apply()
            data = await startrecord(server.call, source_body(resid, "room3", "carol"))
            recordid = data["recordid"]
            playlist = (server.storage_root() / "test1" / "test2"
                        / f"{APPID}_room3_{recordid}_carol.m3u8")
            await query_until(server.call, "room3", recordid,
                              lambda _: segments_in(playlist), what="a segment stored")
            assert (await server.call("pauserecord", ids(resid, "room3", recordid)))["code"] == 0
            answer = await query_until(server.call, "room3", recordid,
                                       lambda a: a["code"] == 4013, timeout=8,
                                       what="the paused task stops")
        finally:
            await pub.stop()
    assert answer["code"] == 4013, answer
    assert answer["data"]["stopreason"] == "paused" and answer["data"]["status"] == 4
    assert playlist_lines(playlist)[-1] == "#EXT-X-ENDLIST"


async def test_pause_survives_a_sigkill_restart(tmp_path: Path, procs: list[Proc]) -> None:  # noqa: F811 (the fixture)
    port = free_port()
    first = Proc(tmp_path, port)
    procs.append(first)
    await first.ready()
    pub = await first.publisher("room4", "dave")
    resid, recordid = await start_recording(first, "room4", "dave")
    await asyncio.sleep(3.0)
    assert (await first.call("pauserecord", ids(resid, "room4", recordid)))["code"] == 0
    closed = (await query(first, "room4", recordid))["data"]["segments"]  # the pause's included
    playlist = stored_playlist(tmp_path, "room4", recordid, "dave")
    await query_until(first.call, "room4", recordid,
                      lambda _: len(segments_in(playlist)) >= closed,
                      what="the segments closed by the pause stored")
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait()
    await pub.stop()

    second = Proc(tmp_path, port)
    procs.append(second)
    await second.ready()
    pub = await second.publisher("room4", "dave")
    try:
        await asyncio.sleep(7.0)  # past idle_timeout_s (6 s): a paused task does not stop
        after = await query(second, "room4", recordid)
        assert after["code"] == 0 and after["data"]["paused"] is True, after
        again = await second.call("pauserecord", ids(resid, "room4", recordid))
        assert again["code"] == 4004, again
        before = [line for line in playlist_lines(playlist) if line.endswith(".ts")]
        assert len(before) == closed == after["data"]["segments"], \
            "nothing is written while paused, also after a restart"
        assert (await second.call("resumerecord", ids(resid, "room4", recordid)))["code"] == 0
        await asyncio.sleep(3.0)
        assert (await second.call("stoprecord", ids(resid, "room4", recordid)))["code"] == 0
    finally:
        await pub.stop()
    lines = playlist_lines(playlist)
    segments = [line for line in lines if line.endswith(".ts")]
    assert segments[: len(before)] == before and len(segments) > len(before)
    assert lines[-1] == "#EXT-X-ENDLIST" and "#EXT-X-DISCONTINUITY" in lines
    probe = probe_playlist(playlist)
    # ~3 s before, ~3 s after; a restart adds its 1 s step (and the paused 7 s are not there)
    assert 4.5 <= probe.duration <= 8.5, probe


async def test_a_paused_mix_writes_nothing(server: Server) -> None:
    pub = await publish(server, "room5", "erin", RED)
    resid = await server.apply()
    mixconfig = {"templateid": 1, "output": dict(OUT)}
    data = await startrecord(server.call, mixed_body(resid, "room5", mixconfig))
    assert data["code"] == 0, data
    recordid = data["recordid"]
    spool = server.settings.data_dir / "spool" / recordid
    try:
        await asyncio.sleep(4.0)
        assert (await server.call("pauserecord", ids(resid, "room5", recordid)))["code"] == 0
        await asyncio.sleep(1.0)  # the worker closes the open segment
        at_pause = (await query(server, "room5", recordid))["data"]
        files = {p.name: p.stat().st_size for p in spool.iterdir() if p.is_file()}
        await asyncio.sleep(4.0)
        paused = (await query(server, "room5", recordid))["data"]
        assert paused["paused"] is True
        assert (paused["segments"], paused["duration"]) == (at_pause["segments"],
                                                            at_pause["duration"])
        assert not [p for p in spool.glob("*.part")], "no segment is open while paused"
        now = {p.name: p.stat().st_size for p in spool.iterdir() if p.is_file()}
        assert {n: s for n, s in now.items() if n.endswith(".ts")}.items() <= files.items()
        assert (await server.call("resumerecord", ids(resid, "room5", recordid)))["code"] == 0
        await asyncio.sleep(4.0)
        assert (await server.call("stoprecord", ids(resid, "room5", recordid)))["code"] == 0
    finally:
        await pub.stop()
    playlist = server.storage_root() / "test1" / "test2" / f"{APPID}_room5_{recordid}.m3u8"
    lines = playlist_lines(playlist)
    assert "#EXT-X-DISCONTINUITY" in lines and lines[-1] == "#EXT-X-ENDLIST"
    probe = probe_playlist(playlist)
    assert 6.0 <= probe.duration <= 10.0, probe  # ~8 s recorded, ~5 s paused
    assert max(pts_jumps(playlist)) < 1.0


# -- live push ----------------------------------------------------------------------------------


FFMPEG = shutil.which("ffmpeg")


class RtmpServer:
    """An RTMP server on loopback that also reads: Debian's ffmpeg in listen mode, writing
    what it receives (copied, not decoded) into an MPEG-TS file flushed packet by packet."""

    def __init__(self, port: int, out: Path) -> None:
        assert FFMPEG is not None
        self.out = out
        self.proc = subprocess.Popen(
            [FFMPEG, "-v", "error", "-y", "-listen", "1", "-i",
             f"rtmp://127.0.0.1:{port}/live/secretkey", "-c", "copy", "-f", "mpegts",
             "-flush_packets", "1", str(out)],
            stdin=subprocess.DEVNULL)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def frames(self) -> tuple[int, int, tuple[int, int] | None]:
        """(video frames, audio frames, picture size) that decode from what it received."""
        if not self.out.exists() or self.out.stat().st_size == 0:
            return 0, 0, None
        video = audio = 0
        size = None
        try:
            with av.open(str(self.out)) as container:
                for frame in container.decode(*container.streams.video,
                                              *container.streams.audio):
                    if isinstance(frame, av.VideoFrame):
                        video += 1
                        size = (frame.width, frame.height)
                    else:
                        audio += 1
        except av.FFmpegError:
            pass  # a file cut short by a kill: what decoded before it counts
        return video, audio, size


async def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.25)


@pytest.mark.skipif(FFMPEG is None, reason="needs Debian's ffmpeg (make test installs it)")
async def test_push_to_rtmp_survives_the_server_going_away(server: Server, tmp_path: Path
                                                           ) -> None:
    port = free_port()
    reader = RtmpServer(port, tmp_path / "push1.ts")
    pub = await publish(server, "room6", "frank", RED)
    resid = await server.apply()
    body = mixed_body(resid, "room6", {"templateid": 1, "output": dict(OUT)})
    body["outputs"] = {"pushurl": [f"rtmp://127.0.0.1:{port}/live/secretkey"]}
    data = await startrecord(server.call, body)
    assert data["code"] == 0, data
    recordid = data["recordid"]
    second: RtmpServer | None = None

    async def push_state() -> dict[str, Any]:
        pushes = (await query(server, "room6", recordid))["data"]["push"]
        return dict(pushes[0]) if pushes else {}  # listed from the worker's first report on

    try:
        async def live() -> bool:
            return (await push_state()).get("state") == "live"

        await wait_for(live, 15.0, "the push to go live")

        async def received() -> bool:
            video, audio, _ = await asyncio.to_thread(reader.frames)
            return video >= 15 * 2 and audio > 50

        await wait_for(received, 15.0, "the first reader to receive two seconds")
        reader.kill()  # the server goes away mid-stream
        segments_then = (await query(server, "room6", recordid))["data"]["segments"]

        async def retrying() -> bool:
            return (await push_state()).get("state") == "retrying"

        await wait_for(retrying, 10.0, "the push to notice the server is gone")
        state = await query(server, "room6", recordid)
        assert "secretkey" not in str(state), "push URLs are shown redacted"
        assert any("push rtmp://127.0.0.1" in w for w in state["data"]["warnings"]), state
        during = (await query_until(
            server.call, "room6", recordid,
            lambda a: a["data"]["segments"] >= segments_then + 1,
            what="a segment recorded while the push retries"))["data"]
        assert during["segments"] >= segments_then + 1, "the recording goes on"
        assert during["status"] == 2

        second = RtmpServer(port, tmp_path / "push2.ts")  # the server is back

        async def back() -> bool:
            s = await push_state()
            return s.get("state") == "live" and s["sessions"] >= 2

        await wait_for(back, 30.0, "the push to recover")
        assert second is not None
        again = second

        async def received_again() -> bool:
            video, audio, _ = await asyncio.to_thread(again.frames)
            return video >= 15 * 2 and audio > 50

        await wait_for(received_again, 15.0, "the second reader to receive two seconds")
        await query_until(server.call, "room6", recordid,
                          lambda a: a["data"]["duration"] > 10.0,
                          what="more than 10 s recorded")
        stopped = await server.call("stoprecord", ids(resid, "room6", recordid))
        assert stopped["code"] == 0, stopped
    finally:
        await pub.stop()
        reader.kill()
        if second is not None:
            try:
                await asyncio.to_thread(second.proc.wait, 10)  # it ends with the stream
            finally:
                second.kill()
    assert second is not None
    video, audio, size = reader.frames()
    assert video >= 15 * 2 and audio > 50 and size == (320, 240), (video, audio, size)
    video, audio, size = second.frames()  # a new reader gets frames again
    assert video >= 15 * 2 and audio > 50 and size == (320, 240), (video, audio, size)
    playlist = server.storage_root() / "test1" / "test2" / f"{APPID}_room6_{recordid}.m3u8"
    probe = probe_playlist(playlist)
    assert probe.duration > 10.0 and max(pts_jumps(playlist)) < 1.0


async def test_a_push_server_that_never_answers_does_not_hold_the_mix(server: Server) -> None:
    """A server that accepts the connection and then says nothing (FFmpeg's RTMP connect would
    wait for it with the GIL held): the push is killed and retried, the mix records on."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # connections are accepted by the kernel and never read
    port = silent.getsockname()[1]
    pub = await publish(server, "room8", "hank", RED)
    try:
        resid = await server.apply()
        body = mixed_body(resid, "room8", {"templateid": 1, "output": dict(OUT)})
        body["outputs"] = {"pushurl": [f"rtmp://127.0.0.1:{port}/live/k"]}
        data = await startrecord(server.call, body)
        assert data["code"] == 0, data
        recordid = data["recordid"]
        state = (await query_until(
            server.call, "room8", recordid,
            lambda a: a["data"]["push"] and a["data"]["push"][0]["attempts"] >= 1
            and "no progress" in str(a["data"]["push"])
            and a["data"]["segments"] >= 2 and a["data"]["duration"] >= 5.0,
            what="a push given up for no progress while the mix records"))["data"]
        assert state["push"][0]["state"] in ("retrying", "connecting"), state["push"]
        assert state["push"][0]["attempts"] >= 1 and "no progress" in str(state["push"])
        assert state["segments"] >= 2 and state["duration"] >= 5.0, state
        assert state["framesskipped"] <= 15, "the mix kept real time"
        assert (await server.call("stoprecord", ids(resid, "room8", recordid)))["code"] == 0
    finally:
        await pub.stop()
        silent.close()


async def test_push_url_checks(server: Server) -> None:
    pub = await publish(server, "room7", "gina", RED)
    try:
        body = mixed_body(await server.apply(), "room7", {"templateid": 1, "output": dict(OUT)})
        body["outputs"] = {"pushurl": ["rtmp://127.0.0.1:1/live/a", "srt://127.0.0.1:9000"]}
        answer = await server.call("startrecord", body)
        if "srt" not in push_protocols():
            assert answer["code"] == 2101 and "outputs.pushurl[1]" in answer["message"], answer
            assert "srt" in answer["message"]
        else:
            assert answer["code"] == 0, answer
    finally:
        await pub.stop()
