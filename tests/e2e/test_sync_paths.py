"""Lip sync through the paths a publisher's media takes besides the plain one
(tests/e2e/test_sync.py): a mix on another worker than the room it shows (the room's frames and
their capture times come over the relay), both recordings paused and resumed, and the publisher
leaving and coming back (a new publication, a new sender clock). The publisher is the aiortc one
of tests/e2e/test_sender_reports.py, whose audio leaves 300 ms after its capture (placed by
arrival, the audio would be ~300 ms late), publishing the flash + beep clip (tests/syncclip.py)
to a node of two workers; the mix converts its 30 fps to 24; each run of each recording between
its discontinuities is read back on its own.

aiortc sends a track's first sender report 0.5-3 s after its first packet. The source
recording holds a new publication's first frames until then (``rooms/capture_wait.py``): every
flash is in sync. The mix, which plays 64 ms behind real time and would drop what came a second
late, places those frames by their arrival: the flashes of the first ``BEFORE_REPORTS_S`` after
the publisher's return are ~300 ms off there, and are counted apart."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from cloudrec.media.hls import parse_playlist
from cloudrec.tokens import make_token
from cloudrec.webrtc.whip_client import Publisher
from tests.e2e.test_interop import (  # noqa: F401 (ffmpeg_whip: a fixture)
    FFMPEG,
    ffmpeg_whip,
    needs_ffmpeg,
)
from tests.e2e.test_mixed import mixed_body
from tests.e2e.test_pause_push import ids
from tests.e2e.test_sender_reports import delay_audio
from tests.e2e.test_sync import MIX_GOAL_S, SOURCE_GOAL_S
from tests.helpers import APPID, LOCAL_STORAGE, SECRET, startrecord, wait_for
from tests.media_check import lip_sync_on_the_wall, playlist_lines, playlist_runs
from tests.nodes import Node, worker_of
from tests.syncclip import MIX_OUT, make_flash_clip, one_input_mix, summary

pytestmark = pytest.mark.slow

RUN_S = 10  # each of the publisher's two runs, about
# After a (re)publication, until both tracks' first reports have come: aiortc sends a track's
# first at 0.5-1.5 s, and the next 0.5-1.5 s later when the first went out before DTLS was up.
BEFORE_REPORTS_S = 3.5
# The stop ends what comes in: a picture of the last moments is there, its sound, which leaves
# 300 ms after it, is not (a mix found its last flash's beep 110 ms late once in CI).
END_S = 0.5


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    n = Node(tmp_path / "node", workers=2, segment_seconds=2.0, write_rate_per_s=100,
             query_rate_per_s=100).start()
    try:
        await n.ready()
        yield n
    finally:
        n.kill()


async def holder(node: Node, room: str) -> dict[str, Any]:
    async def held() -> dict[str, Any] | None:
        return worker_of(await node.health(), room)

    return await wait_for(held, timeout=20, interval=0.1, what=f"a worker holding {room}")


async def call_ok(node: Node, verb: str, body: dict[str, Any]) -> None:
    data = await node.call(verb, body)
    assert data["code"] == 0, (verb, data)


def runs_in_sync(playlist: Path, goal_s: float,
                 apart: tuple[float, float] | None = None) -> list[list[float]]:
    """Each run's offsets (audio minus picture); every run of 3 s or more has flashes measured
    and every flash is within ``goal_s``, but for those whose wall-clock time falls in
    ``apart`` (from, to), and those of the recording's last ``END_S``, which are left out."""
    offsets = []
    last = parse_playlist(playlist.read_text(), playlist.parent)[-1]
    assert last.date is not None
    end = last.date + last.duration
    for run in playlist_runs(playlist):
        pairs = lip_sync_on_the_wall(run)
        found = [o for wall, o in pairs if wall < end - END_S
                 and (apart is None or not apart[0] <= wall < apart[1])]
        seconds = sum(float(line.split(":", 1)[1].rstrip(",")) for line in playlist_lines(run)
                      if line.startswith("#EXTINF"))
        print(f"{run.name}: {seconds:.1f} s,", summary(found) if found else "no flash",
              f"({len(pairs) - len(found)} left out)" if len(found) < len(pairs) else "")
        assert len(found) >= 2 or seconds < 3.0, (run.name, seconds, found)
        assert all(abs(o) <= goal_s for o in found), (run.name, summary(found))
        offsets.append(found)
    return offsets


@needs_ffmpeg
async def test_lip_sync_through_a_relay_a_pause_and_a_reconnect(
        tmp_path: Path, node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    clip = make_flash_clip(FFMPEG, tmp_path / "flash.mkv", 6)  # type: ignore[arg-type]
    pubs: list[Publisher] = []
    delay_audio(monkeypatch, pubs)

    async def publish() -> Publisher:
        pub = Publisher(f"{node.base}/whip/{APPID}/speak/flash",
                        make_token(APPID, "speak", "flash", SECRET), clip=str(clip))
        pubs.append(pub)
        await pub.start()
        await pub.wait_connected()
        return pub

    # The mix's own room, on one worker, with a picture-only publisher (sound would be mixed).
    host = await node.publisher("stage", "host", audio=False)
    stage = await holder(node, "stage")
    try:
        first = await publish()
        speak = await holder(node, "speak")
        assert speak["id"] != stage["id"], "a new room goes to the idle worker: the mix relays"
        resid, recordid = await node.record("speak", "flash")
        mres = (await node.call("applyrecord", {}))["resid"]
        mixconfig = one_input_mix("speak", "flash")
        mixconfig["output"] = {**MIX_OUT, "videofps": 24, "videogop": 48}
        started = await startrecord(node.call, mixed_body(mres, "stage", mixconfig))
        assert started["code"] == 0, started
        mrec = started["recordid"]
        recordings = [(resid, "speak", recordid), (mres, "stage", mrec)]

        await asyncio.sleep(3)
        for rec in recordings:
            await call_ok(node, "pauserecord", ids(*rec))
        await asyncio.sleep(2)
        for rec in recordings:
            await call_ok(node, "resumerecord", ids(*rec))
        await asyncio.sleep(RUN_S - 5)
        await first.stop()  # the publisher leaves, and comes back: a new publication
        returned = time.time()
        await publish()
        await asyncio.sleep(RUN_S)
        print("after the reconnect, speak is on", (await holder(node, "speak"))["id"],
              "and stage on", stage["id"])
        for rec in recordings:
            await call_ok(node, "stoprecord", ids(*rec))
    finally:
        for pub in [*pubs, host]:
            await pub.stop()

    folder = node.data_dir / "storage" / LOCAL_STORAGE["bucket"] / "test1" / "test2"
    source = runs_in_sync(folder / f"{APPID}_speak_{recordid}_flash.m3u8", SOURCE_GOAL_S)
    mixed = runs_in_sync(folder / f"{APPID}_stage_{mrec}.m3u8", MIX_GOAL_S,
                         apart=(returned, returned + BEFORE_REPORTS_S))
    # The source: before the pause, after it, after the reconnect; the mix: before and after
    # the pause (the publisher's return is an input coming back, no discontinuity).
    assert len(source) >= 3 and len(mixed) >= 2, (source, mixed)
    assert len(source[-1]) >= 6, "flashes after the reconnect, in the source"
    assert sum(len(o) for o in mixed) >= 12 and len(mixed[-1]) >= 8, mixed
