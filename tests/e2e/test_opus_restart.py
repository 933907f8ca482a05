"""An Opus-kept (fMP4) recording killed mid-recording resumes into the same playlist."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.e2e.test_restart import Proc, procs, stored_playlist  # noqa: F401 (a fixture)
from tests.helpers import APPID, free_port, seconds_in, source_body, startrecord, wait_for
from tests.media_check import playlist_lines, probe_playlist


def m4s_in(playlist: Path) -> list[str]:
    try:
        return [x for x in playlist.read_text().splitlines() if x.endswith(".m4s")]
    except FileNotFoundError:
        return []


async def test_sigkill_resumes_an_opus_recording(tmp_path: Path, procs: list[Proc]) -> None:  # noqa: F811
    port = free_port()
    first = Proc(tmp_path, port)
    procs.append(first)
    await first.ready()
    pub = await first.publisher("room1", "alice")
    resid = (await first.call("applyrecord", {}))["resid"]
    data = await startrecord(first.call, source_body(resid, "room1", "alice",
                                                     outputs={"audiocodec": "opus"}))
    assert data["code"] == 0, data
    recordid = data["recordid"]
    playlist = stored_playlist(tmp_path, "room1", recordid, "alice")
    await wait_for(lambda: len(m4s_in(playlist)) >= 2, what="two segments stored")
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait()
    await pub.stop()
    before = m4s_in(playlist)

    second = Proc(tmp_path, port)
    procs.append(second)
    await second.ready()
    pub = await second.publisher("room1", "alice")
    await wait_for(lambda: seconds_in(playlist) >= len(before) + 2.5,
                   what="2.5 s more stored after the restart")
    stopped = await second.call("stoprecord", {"resid": resid, "appid": APPID, "roomid": "room1",
                                               "recordid": recordid})
    await pub.stop()
    assert stopped["code"] == 0, stopped
    lines = playlist_lines(playlist)
    after = [x for x in lines if x.endswith(".m4s")]
    assert after[: len(before)] == before and len(after) > len(before)
    assert "#EXT-X-DISCONTINUITY" in lines and lines[-1] == "#EXT-X-ENDLIST"
    for line in lines:
        if line.startswith("#EXT-X-MAP"):
            assert (playlist.parent / line.split('"')[1]).stat().st_size > 0
    probe = probe_playlist(playlist)
    assert probe.video_codec == "h264" and probe.audio_codec == "opus", probe
    assert probe.video_frames >= 15 * (len(before) + 2)
