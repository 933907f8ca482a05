"""``/metrics``: scraped before and during a real recording (WebRTC publisher, local storage),
the counters move; with two worker processes each worker has its own ``worker`` label."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from cloudrec.tokens import make_token
from cloudrec.webrtc.whip_client import Publisher
from tests.helpers import (
    APPID,
    SECRET,
    free_port,
    make_settings,
    running_server,
    source_body,
    startrecord,
)
from tests.nodes import Node, worker_of

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def labels_of(samples: Samples, name: str, label: str) -> set[str]:
    return {dict(ls)[label] for (n, ls), _ in samples.items() if n == name and label in dict(ls)}


async def scrape(client: httpx.AsyncClient, base: str) -> Samples:
    r = await client.get(f"{base}/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return parse(r.text)


async def wait_for(client: httpx.AsyncClient, base: str, check: Any,
                   timeout: float = 30) -> Samples:
    """Scrape until ``check(samples)`` holds (workers report once a second)."""
    samples: Samples = {}
    for _ in range(int(timeout / 0.25)):
        samples = await scrape(client, base)
        if check(samples):
            return samples
        await asyncio.sleep(0.25)
    raise AssertionError(f"metrics never got there: {sorted(samples.items())[:80]}")


async def publisher(base: str, room: str, uid: str) -> Publisher:
    pub = Publisher(f"{base}/whip/{APPID}/{room}/{uid}", make_token(APPID, room, uid, SECRET))
    await pub.start()
    await pub.wait_connected()
    return pub


async def test_counters_move_during_a_recording(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, segment_seconds=1.0)
    async with running_server(settings) as srv:
        before = await scrape(srv.client, srv.base)
        for name in ["cloudrec_publishers", "cloudrec_worker_cpu",
                     "cloudrec_callback_outbox_depth", "cloudrec_spool_bytes"]:
            assert any(n == name for n, _ in before), f"{name} missing"
        assert value(before, "cloudrec_recordings_active", type="source") == 0
        assert value(before, "cloudrec_publishers") == 0

        pub = await publisher(srv.base, "m1", "alice")
        try:
            resid = await srv.apply()
            hook = f"http://127.0.0.1:{free_port()}/hook"  # nobody listens: delivery fails
            data = await startrecord(srv.call, source_body(resid, "m1", "alice", callbackurl=hook))
            assert data["code"] == 0, data
            recordid = data["recordid"]

            def recording(s: Samples) -> bool:
                return (value(s, "cloudrec_segments_stored_total")
                        >= value(before, "cloudrec_segments_stored_total") + 2
                        and value(s, "cloudrec_recordings_active", type="source") == 1
                        and value(s, "cloudrec_callback_failures_total") >= 1)

            during = await wait_for(srv.client, srv.base, recording)
            assert value(during, "cloudrec_publishers") == 1
            assert value(during, "cloudrec_callback_outbox_depth") >= 1
            for name in ["cloudrec_segments_written_total", "cloudrec_upload_bytes_total",
                         "cloudrec_files_stored_total", "cloudrec_recordings_started_total"]:
                assert value(during, name) > value(before, name), name
            for kind in ("video", "audio"):
                assert (value(during, "cloudrec_frames_received_total", kind=kind)
                        > value(before, "cloudrec_frames_received_total", kind=kind) + 10), kind
            assert value(during, "cloudrec_api_requests_total", endpoint="startrecord",
                         code="0") == 1
            assert value(during, "cloudrec_api_requests_total", endpoint="applyrecord",
                         code="0") == 1
            assert value(during, "cloudrec_api_request_duration_seconds_count",
                         endpoint="startrecord") >= 1
            assert value(during, "cloudrec_upload_failures_total") == value(
                before, "cloudrec_upload_failures_total")
            workers = labels_of(during, "cloudrec_worker_cpu", "worker")
            assert len(workers) == 1 and labels_of(
                during, "cloudrec_segments_written_total", "worker") == workers

            # a refused call is counted with its seed code
            bad = await srv.call("queryrecord/m1/nosuchrecord")
            assert bad["code"] == 4013
            stopped = await srv.call("stoprecord", {"resid": resid, "appid": APPID,
                                                    "roomid": "m1", "recordid": recordid})
            assert stopped["code"] == 0, stopped
        finally:
            await pub.stop()
        after = await wait_for(srv.client, srv.base, lambda s: value(
            s, "cloudrec_recordings_active", type="source") == 0 and value(
            s, "cloudrec_publishers") == 0)
        assert value(after, "cloudrec_recordings_stopped_total", type="source", reason="api") \
            > value(before, "cloudrec_recordings_stopped_total", type="source", reason="api")
        assert value(after, "cloudrec_api_requests_total", endpoint="queryrecord",
                     code="4013") == 1
        assert value(after, "cloudrec_segments_pending") == 0


async def test_each_worker_has_its_label(tmp_path: Path) -> None:
    node = Node(tmp_path / "node", workers=2).start()
    try:
        await node.ready()
        async with httpx.AsyncClient(timeout=30) as client:
            first = await wait_for(client, node.base, lambda s: len(
                labels_of(s, "cloudrec_worker_cpu", "worker")) == 2)
            workers = labels_of(first, "cloudrec_worker_cpu", "worker")
            assert labels_of(first, "cloudrec_segments_written_total", "worker") == workers
            assert labels_of(first, "cloudrec_worker_cpu", "node") == {f"127.0.0.1:{node.port}"}
            pub = await node.publisher("w2room", "bob")
            try:
                await node.record("w2room", "bob")
                owner = None
                for _ in range(40):  # /healthz shows the workers as of their last status
                    owner = worker_of(await node.health(), "w2room")
                    if owner is not None:
                        break
                    await asyncio.sleep(0.25)
                assert owner is not None
                mine, other = owner["id"], (workers - {owner["id"]}).pop()
                during = await wait_for(client, node.base, lambda s: value(
                    s, "cloudrec_segments_stored_total", worker=mine) >= 1)
                assert value(during, "cloudrec_recordings_active", worker=mine,
                             type="source") == 1
                assert value(during, "cloudrec_recordings_active", worker=other) == 0
                assert value(during, "cloudrec_publishers", worker=mine) == 1
                assert value(during, "cloudrec_frames_received_total", worker=mine) > 0
                assert value(during, "cloudrec_frames_received_total", worker=other) == 0
                assert value(during, "cloudrec_spool_bytes", worker=other) == 0
                assert value(during, "cloudrec_api_requests_total", endpoint="startrecord",
                             code="0") == 1
            finally:
                await pub.stop()
    finally:
        node.stop()
