"""A stop ends a source recording where its media ends: what reached the recording before the
stop is written, and so is the audio of the last pictures that arrives a moment after it.

The publisher here writes real H.264 and Opus (made by PyAV) into the room through the hub, as
an ingest does, with capture times (as a WebRTC publisher's sender reports give them), paced in
real time. Its audio of the last key frame is held back: sent just before the stop, and after
it. The last segment must hold both tracks: one of pictures alone never ends in a browser's
player (hls.js keeps audio and video of an fMP4 stream in one buffer, whose range is where both
are, and it does not grow), which is how ``test_opus_hls`` stalled once in a while.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from cloudrec.tasks import StopReason
from tests.e2e.test_console import needs_browser
from tests.e2e.test_opus_hls import play_files_in_hls_js
from tests.e2e.test_whep import _Upstream
from tests.helpers import APPID, make_settings, running_server, source_body, startrecord
from tests.unit.test_media_source import FPS, h264_aus, opus_packets, probe

ROOM, UID = "stop-room", "alice"
KEY_AT = 2.0  # the second key frame (one every 2 s): it opens the recording's last segment
STOP_AT = KEY_AT + 0.06  # the audio before this is queued when the stop comes
LATE_TO = KEY_AT + 0.14  # the audio up to this comes 0.1 s after the stop


async def _paced(pub, start: float, items: list[tuple[float, str, int]]) -> None:
    """Write ``(t, kind, index)`` at ``start + t`` (monotonic), as a live publisher would."""
    video, audio = h264_aus(3.0), opus_packets(3.0)
    for t, kind, i in items:
        delay = start + t - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if kind == "video":
            pub.write("video", "h264", 90000, video[i], i * 90000 // FPS)
        else:
            pub.write("audio", "opus", 48000, audio[i], i * 960)


def _schedule(t0: float, t1: float, *, video: bool = True,
              audio: bool = True) -> list[tuple[float, str, int]]:
    items = []
    if video:
        items += [(i / FPS, "video", i) for i in range(round(t0 * FPS), round(t1 * FPS))]
    if audio:
        items += [(j * 0.02, "audio", j) for j in range(round(t0 / 0.02), round(t1 / 0.02))]
    return sorted(items)


def _decoded(stored: Path, name: str, init: bytes, tmp: Path) -> dict[str, float]:
    """Video frames and audio seconds PyAV decodes from one stored segment (an fMP4 one joined
    to its initialisation section)."""
    path = stored / name
    if init:
        path = tmp / f"joined_{name}.mp4"
        path.write_bytes(init + (stored / name).read_bytes())
    info = probe(path)
    return {"video": info["video"], "audio": info["audio_samples"] / 48000}


@pytest.mark.parametrize("audiocodec", ["opus", "aac"])
async def test_a_stop_writes_what_came_before_it_and_the_last_pictures_sound(
        tmp_path: Path, audiocodec: str) -> None:
    settings = make_settings(tmp_path, segment_seconds=2.0, idle_timeout_s=10.0)
    async with running_server(settings) as server:
        hub = server.app.state.hub
        pub = hub.attach(APPID, ROOM, UID, kinds=frozenset({"audio", "video"}),
                         codecs={"audio": "opus", "video": "h264"}, upstream=_Upstream(),
                         origin="test", sender_clock=True)
        wall0 = time.time()
        pub.set_sender_clock("video", wall0)
        pub.set_sender_clock("audio", wall0)
        resid = await server.apply()
        body = source_body(resid, ROOM, UID, outputs={"audiocodec": audiocodec})
        data = await startrecord(server.call, body)
        assert data["code"] == 0, data
        recordid = str(data["recordid"])
        recording = server.app.state.service.recordings[recordid]

        start = time.monotonic()
        await _paced(pub, start, _schedule(0.0, KEY_AT))
        # the key frame and the picture after it reach the recording; their audio not yet
        await _paced(pub, start, _schedule(KEY_AT, KEY_AT + 0.1, audio=False))
        await asyncio.sleep(0.15)  # the recording's loop (a batch every 50 ms) takes them
        await _paced(pub, start, _schedule(KEY_AT, STOP_AT, video=False))
        stopping = asyncio.ensure_future(recording.stop(StopReason.API, timeout=60))
        await asyncio.sleep(0)  # the stop is asked now, with that audio queued
        await asyncio.sleep(0.1)
        # then the rest of that audio, and pictures taken after the stop
        late = (_schedule(STOP_AT, LATE_TO, video=False)
                + _schedule(KEY_AT + 0.1, LATE_TO + 0.1, audio=False))
        await _paced(pub, 0.0, sorted(late))
        assert await stopping
        hub.detach(pub, "unpublished")

        stored = server.storage_root() / "test1" / "test2"
        base = f"{APPID}_{ROOM}_{recordid}_{UID}"
        names = [line for line in (stored / f"{base}.m3u8").read_text().splitlines()
                 if not line.startswith("#")]
        assert len(names) == 2, names
        init = (stored / f"{base}_init.mp4").read_bytes() if audiocodec == "opus" else b""
        segments = [_decoded(stored, name, init, tmp_path) for name in names]
        if audiocodec == "opus" and not needs_browser.args[0]:
            ended = await asyncio.to_thread(play_files_in_hls_js, stored, f"{base}.m3u8",
                                            tmp_path)
            assert ended["ended"] and ended["error"] is None, ended
    first, last = segments
    # the last segment: its key frame and the picture after it (those taken after the stop are
    # not written), with their audio and the audio that came 0.1 s after the stop
    assert last["video"] == 2, segments
    assert last["audio"] >= LATE_TO - KEY_AT - 0.025, segments
    assert first["video"] == KEY_AT * FPS, segments
    assert abs(first["audio"] + last["audio"] - LATE_TO) < 0.05, segments
