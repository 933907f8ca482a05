"""Every core of a node: ``workers = 2`` spreads rooms over two worker processes behind one
port; a worker killed mid-recording is restarted and its task resumes in the same playlist."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import AsyncIterator

import pytest

from tests.helpers import APPID, LOCAL_STORAGE, segments_in, wait_for
from tests.media_check import playlist_lines, probe_playlist
from tests.nodes import Node, worker_of

pytestmark = pytest.mark.slow


@pytest.fixture
async def nodes() -> AsyncIterator[list[Node]]:
    started: list[Node] = []
    yield started
    for node in started:
        node.kill()


def playlist_of(node: Node, room: str, recordid: str, uid: str) -> Path:
    return (node.data_dir / "storage" / LOCAL_STORAGE["bucket"] / "test1" / "test2"
            / f"{APPID}_{room}_{recordid}_{uid}.m3u8")


async def test_two_workers_spread_rooms_and_a_killed_worker_resumes(tmp_path: Path,
                                                                    nodes: list[Node]) -> None:
    node = Node(tmp_path, workers=2).start()
    nodes.append(node)
    await node.ready()
    health = await node.health()
    assert len(health["workers"]) == 2
    assert len({w["pid"] for w in health["workers"]} | {node.proc.pid}) == 3  # type: ignore[union-attr]

    pubs = [await node.publisher(room, "alice") for room in ("ra", "rb")]
    holders = await wait_for(lambda: _holders(node, ("ra", "rb")), timeout=20, interval=0.2)
    assert holders["ra"]["id"] != holders["rb"]["id"], "two new rooms go to two idle workers"

    resid, recordid = await node.record("ra", "alice")
    _, other = await node.record("rb", "alice")
    playlist = playlist_of(node, "ra", recordid, "alice")
    await wait_for(lambda: len(segments_in(playlist)) >= 2, timeout=20, interval=0.1,
                   what="two segments stored before the kill")
    victim = holders["ra"]
    os.kill(victim["pid"], signal.SIGKILL)
    await pubs[0].stop()
    before = [line for line in playlist_lines(playlist) if line.endswith(".ts")]
    assert len(before) >= 2

    # the supervisor restarts the worker in its slot; it resumes its task
    async def restarted():  # type: ignore[no-untyped-def]
        w = worker_of(await node.health(), "ra")
        return w if w and w["pid"] != victim["pid"] else None

    again = await wait_for(restarted, timeout=20, interval=0.2)
    assert again["id"] == victim["id"]
    query = await node.call(f"queryrecord/ra/{recordid}")
    assert query["code"] == 0 and query["data"]["status"] in (1, 2), query
    assert (await node.call(f"queryrecord/rb/{other}"))["data"]["status"] == 2, \
        "the other worker's recording was not disturbed"

    pubs[0] = await node.publisher("ra", "alice")  # the publisher comes back

    async def recorded_since_resume() -> bool:
        data = (await node.call(f"queryrecord/ra/{recordid}"))["data"]
        return float(data["duration"]) > len(before) + 2.0

    await wait_for(recorded_since_resume, timeout=30, interval=0.2,
                   what="more than 2 s recorded after the resume")
    stopped = await node.call("stoprecord", {"resid": resid, "appid": APPID, "roomid": "ra",
                                             "recordid": recordid})
    assert stopped["code"] == 0, stopped
    for pub in pubs:
        await pub.stop()
    lines = playlist_lines(playlist)
    after = [line for line in lines if line.endswith(".ts")]
    assert after[: len(before)] == before, "no segment from before the kill is missing"
    assert len(after) > len(before) and "#EXT-X-DISCONTINUITY" in lines
    assert lines[-1] == "#EXT-X-ENDLIST"
    probe = probe_playlist(playlist)
    assert probe.width == 320 and probe.audio_codec == "aac"
    assert probe.duration > len(before) + 2.0

    node.stop()  # SIGTERM drains: both workers finalise
    assert node.proc is not None and node.proc.returncode in (0, -signal.SIGTERM)


async def _holders(node: Node, rooms: tuple[str, ...]) -> dict[str, dict] | None:  # type: ignore[type-arg]
    health = await node.health()
    found = {room: worker_of(health, room) for room in rooms}
    return found if all(found.values()) else None  # type: ignore[return-value]
