"""The cluster directory: the same behaviour in memory (one node) and in a real Redis."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import AsyncIterator

import pytest

from cloudrec.cluster import ClusterFull, Directory, LocalDirectory, WorkerInfo
from cloudrec.cluster.redis import RedisDirectory


@pytest.fixture(params=["local", "redis"])
async def directory(request: pytest.FixtureRequest) -> AsyncIterator[Directory]:
    if request.param == "local":
        d: Directory = LocalDirectory(lease_s=1.0)
    else:
        d = RedisDirectory(request.getfixturevalue("redis_url"), lease_s=1.0)
    yield d
    await d.close()


def worker(node: str, index: int, **kw: object) -> WorkerInfo:
    return WorkerInfo(id=f"{node}/w{index}", node=node, url=f"http://{node}:{index}",
                      public_url=f"http://{node}", **kw)  # type: ignore[arg-type]


async def test_new_rooms_go_to_the_most_spare_worker_and_stay(directory: Directory) -> None:
    busy, idle = worker("a", 0, cpu=0.6), worker("b", 0, cpu=0.1)
    await directory.heartbeat("a", [busy])
    await directory.heartbeat("b", [idle])
    placed = await directory.place((1, "r1"))
    assert placed.id == idle.id
    assert (await directory.owner((1, "r1"))).id == idle.id  # type: ignore[union-attr]
    assert (await directory.place((1, "r1"))).id == idle.id, "a placed room keeps its owner"
    assert await directory.owner((1, "nowhere")) is None


async def test_placements_reserve_capacity_so_rooms_spread(directory: Directory) -> None:
    await directory.heartbeat("a", [worker("a", 0), worker("a", 1)])
    owners = {(await directory.place((1, f"r{i}"))).id for i in range(2)}
    assert owners == {"a/w0", "a/w1"}


async def test_concurrent_placements_of_one_room_agree(directory: Directory) -> None:
    await directory.heartbeat("a", [worker("a", i) for i in range(4)])
    placed = await asyncio.gather(*(directory.place((1, "same")) for _ in range(8)))
    assert len({p.id for p in placed}) == 1


async def test_a_full_cluster_refuses_and_says_why(directory: Directory) -> None:
    await directory.heartbeat("a", [worker("a", 0, cpu=0.84), worker("a", 1, draining=True),
                                    worker("a", 2, recordings=2, max_recordings=2)])
    with pytest.raises(ClusterFull) as full:
        await directory.place((1, "r"))
    message = full.value.message
    assert full.value.code == 4001
    assert "a/w0: CPU" in message and "a/w1: draining" in message and "2 recordings" in message


async def test_a_silent_node_is_forgotten_after_its_lease(directory: Directory) -> None:
    await directory.heartbeat("a", [worker("a", 0, rooms=("1/r",))])
    await directory.heartbeat("b", [worker("b", 0)])
    assert (await directory.owner((1, "r"))).id == "a/w0"  # type: ignore[union-attr]
    t0 = time.monotonic()
    while await directory.owner((1, "r")) is not None:  # "a" stopped renewing
        await directory.heartbeat("b", [replace(worker("b", 0), updated=time.time())])
        assert time.monotonic() - t0 < 3.0
        await asyncio.sleep(0.1)
    assert [w.id for w in await directory.workers()] == ["b/w0"]
    assert (await directory.place((1, "r"))).id == "b/w0", "the room is free for a live node"


async def test_a_node_that_leaves_frees_its_rooms_at_once(directory: Directory) -> None:
    await directory.heartbeat("a", [worker("a", 0, rooms=("1/r",))])
    await directory.forget_node("a")
    assert await directory.owner((1, "r")) is None and await directory.workers() == []


async def test_a_stopped_recording_gives_its_reservation_back(directory: Directory) -> None:
    await directory.heartbeat("a", [worker("a", 0)])
    await directory.reserve("a/w0", 0.3)
    await directory.reserve("a/w0", 0.2)
    await directory.unreserve("a/w0")
    assert await directory.reserved("a/w0") == pytest.approx(0.2)
    await directory.unreserve("a/w0")
    await directory.unreserve("a/w0")  # nothing left: no error
    assert await directory.reserved("a/w0") == 0
