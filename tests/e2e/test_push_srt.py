"""The live push of a mix to an ``srt://`` URL, end to end: a real WHIP publisher over loopback
→ cloudrec's mix → MPEG-TS over libsrt to Debian's ``ffmpeg`` as an SRT listener, which copies
what it receives into a file that PyAV decodes (H.264 and AAC frames); the listener goes away
and comes back, and the push follows with backoff, as an RTMP push does."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path
from typing import Any, AsyncIterator

import av
import pytest

from cloudrec.ingest import libsrt
from tests.e2e.test_mixed import OUT, RED, mixed_body, publish
from tests.e2e.test_pause_push import RtmpServer, ids, query, wait_for
from tests.helpers import Server, free_port, make_settings, query_until, running_server, startrecord

FFMPEG = shutil.which("ffmpeg")
pytestmark = pytest.mark.skipif(FFMPEG is None or not libsrt.available(),
                                reason="needs Debian's ffmpeg and libsrt (make test installs them)")


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    async with running_server(make_settings(tmp_path, idle_timeout_s=3.0, segment_seconds=2.0,
                                            write_rate_per_s=1000, query_rate_per_s=1000)) as s:
        yield s


class SrtListener(RtmpServer):
    """An SRT listener on loopback that reads: Debian's ffmpeg (built with libsrt) in listener
    mode, copying what it receives into an MPEG-TS file flushed packet by packet."""

    def __init__(self, port: int, out: Path) -> None:
        assert FFMPEG is not None
        self.out = out
        self.proc = subprocess.Popen(
            [FFMPEG, "-v", "error", "-y", "-i", f"srt://127.0.0.1:{port}?mode=listener",
             "-c", "copy", "-f", "mpegts", "-flush_packets", "1", str(out)],
            stdin=subprocess.DEVNULL)


async def test_push_to_srt_reaches_a_listener_and_survives_it_going_away(
        server: Server, tmp_path: Path) -> None:
    port = free_port()
    reader = SrtListener(port, tmp_path / "srt1.ts")
    pub = await publish(server, "room9", "hana", RED)
    resid = await server.apply()
    body = mixed_body(resid, "room9", {"templateid": 1, "output": dict(OUT)})
    body["outputs"] = {"pushurl": [f"srt://127.0.0.1:{port}?streamid=live/secretkey&latency=120"]}
    data = await startrecord(server.call, body)
    assert data["code"] == 0, data
    recordid = data["recordid"]
    second: SrtListener | None = None

    async def push_state() -> dict[str, Any]:
        pushes = (await query(server, "room9", recordid))["data"]["push"]
        return dict(pushes[0]) if pushes else {}

    async def got_two_seconds(listener: SrtListener) -> bool:
        video, audio, _ = await asyncio.to_thread(listener.frames)
        return video >= 15 * 2 and audio > 50

    try:
        async def live() -> bool:
            return (await push_state()).get("state") == "live"

        await wait_for(live, 20.0, "the SRT push to go live")
        await wait_for(lambda: got_two_seconds(reader), 15.0,
                       "the SRT listener to receive two seconds")
        reader.kill()  # the listener goes away mid-stream

        async def retrying() -> bool:
            return (await push_state()).get("state") == "retrying"

        await wait_for(retrying, 20.0, "the push to notice the listener is gone")
        state = await query(server, "room9", recordid)
        assert "secretkey" not in str(state), "push URLs are shown redacted"
        assert any("push srt://127.0.0.1" in w for w in state["data"]["warnings"]), state
        assert state["data"]["status"] == 2, "the recording goes on"

        second = SrtListener(port, tmp_path / "srt2.ts")  # the listener is back

        async def back() -> bool:
            s = await push_state()
            return s.get("state") == "live" and s["sessions"] >= 2

        await wait_for(back, 40.0, "the SRT push to recover")
        again = second
        await wait_for(lambda: got_two_seconds(again), 15.0,
                       "the second listener to receive two seconds")
        await query_until(server.call, "room9", recordid,
                          lambda a: a["data"]["duration"] > 6.0, what="more than 6 s recorded")
        stopped = await server.call("stoprecord", ids(resid, "room9", recordid))
        assert stopped["code"] == 0, stopped
    finally:
        await pub.stop()
        reader.kill()
        if second is not None:
            second.kill()
    assert second is not None
    for listener in (reader, second):
        video, audio, size = listener.frames()  # h264 and aac that decode
        assert video >= 15 * 2 and audio > 50 and size == (320, 240), (video, audio, size)
        with av.open(str(listener.out)) as container:
            codecs = sorted(s.codec_context.name for s in container.streams
                            if s.type in ("audio", "video"))
        assert codecs == ["aac", "h264"], codecs
