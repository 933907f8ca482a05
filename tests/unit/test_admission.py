"""Admission counts committed cost (cluster.costs), not a moment's CPU reading."""

from __future__ import annotations

import asyncio
import time

from cloudrec.cluster.costs import BASE_COSTS, CostModel, recording_kind
from cloudrec.cluster.directory import WorkerInfo
from cloudrec.cluster.local import LocalDirectory


def worker(**kw) -> WorkerInfo:
    base = {"id": "n/w0", "node": "n", "url": "", "public_url": "", "capacity": 0.85}
    return WorkerInfo(**(base | kw))


def test_kinds_of_requests() -> None:
    assert recording_kind({"streamtype": 2}) == ("source_aac", 1.0)
    assert recording_kind({"streamtype": 2, "outputs": {"audiocodec": "opus"}})[0] == "source_opus"
    kind, units = recording_kind({"streamtype": 1, "mixconfig": {"output": {
        "videowidth": 1280, "videoheight": 720}}})
    assert kind == "mix" and units == 3.0


def test_costs_are_learned_from_the_tree_cpu_and_smoothed() -> None:
    model = CostModel()
    carried = [("source_aac", 1.0)] * 10 + [("publisher", 10.0)]
    expected = model.expected(carried)
    for i in range(120):  # the tree costs twice what the base costs say, for 2 minutes
        model.observe(2 * expected, carried, now=float(i))
    assert abs(model.scale - 2.0) < 0.05
    model.observe(50.0, carried, now=121.0)  # one spike moves it little
    assert model.scale < 2.5
    assert model.costs()["source_aac"] == round(BASE_COSTS["source_aac"] * model.scale, 5)


def test_a_cpu_spike_does_not_refuse_what_committed_cost_allows() -> None:
    busy = worker(cpu=0.84, committed=0.2, costs={"source_aac": 0.012}, recordings=10)
    assert busy.refused(0.0, cost=busy.cost_of("source_aac")) is None
    full = worker(cpu=0.1, committed=0.84, costs={"source_aac": 0.012}, recordings=10)
    assert "committed" in (full.refused(0.0, cost=0.012) or "")
    old = worker(cpu=0.84, recordings=10)  # a worker that publishes no committed cost
    assert "CPU" in (old.refused() or "")
    capped = worker(committed=0.1, recordings=4, max_recordings=4, costs={"source_aac": 0.01})
    assert "at most 4" in (capped.refused() or "")


def test_a_recording_bigger_than_a_worker_goes_only_to_an_idle_one() -> None:
    cost = 0.24 + 0.7  # a 1280x720 mix and its browser, over a default worker's 0.85
    assert worker(committed=0.004).refused(0.0, cost=cost) is None
    assert "idle worker" in (worker(committed=0.2).refused(0.0, cost=cost) or "")
    assert "idle worker" in (worker(committed=0.0).refused(0.1, cost=cost) or "")
    assert worker(committed=0.0, draining=True).refused(0.0, cost=cost) == "draining"


def test_a_heartbeat_replaces_the_reservations_it_counts() -> None:
    async def run() -> None:
        d = LocalDirectory()
        await d.reserve("n/w0", 0.1)
        await d.reserve("n/w0", 0.1)
        assert abs(await d.reserved("n/w0") - 0.2) < 1e-9
        await d.heartbeat("n", [worker(committed=0.2, updated=time.time())])
        assert await d.reserved("n/w0") == 0.0
        await d.heartbeat("n", [worker(committed=0.2, updated=time.time() - 1)])
        await d.reserve("n/w0", 0.1)  # made after the status was asked for: kept
        await d.heartbeat("n", [worker(committed=0.2, updated=time.time() - 1)])
        assert abs(await d.reserved("n/w0") - 0.1) < 1e-9

    asyncio.run(run())
