"""startrecord latency on a 3-node cluster, against a single node in the same run.

Method: a real PostgreSQL and Redis (tests/services.py's starters, on loopback), three
``cloudrec serve`` nodes with ``workers = 1`` sharing ``database_url``, ``redis_url`` and
``cluster_secret`` (distinct ``node_id``), and ``ROOMS`` clip publishers, one room each,
published through the nodes in turn. Then ``CYCLES`` applyrecord → startrecord → (hold
``HOLD_S``) → stoprecord cycles, ``CONCURRENCY`` at a time, each call sent to the next node in
turn (so a resid applied on one node starts on the next and stops on the third). The reference
is the same load on one node with the embedded defaults (SQLite, no Redis). Latency is per HTTP
call as the client sees it; a startrecord answered 4001 (no capacity: admission's reservations)
is counted, and retried after 0.5 s, the retry timed as a call of its own.
``BENCH_QUICK=1`` runs 60 cycles instead of 150.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from common import APPID, HEADERS, ServerProcess, start_publishers, start_server, wait_ready  # noqa: E402

from cloudrec.webrtc.synthetic import make_clip  # noqa: E402
from tests.services import start_postgres, start_redis  # noqa: E402

QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")
CYCLES = 60 if QUICK else 150
CONCURRENCY = 6
ROOMS = 6
HOLD_S = 0.5
STORAGE = {"vender": 101, "endpoint": "local", "bucket": "cluster", "accesskey": "-",
           "secretkey": "-"}
SETTINGS = {"workers": 1, "idle_timeout_s": 60, "write_rate_per_s": 1_000_000,
            "query_rate_per_s": 1_000_000}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000 if ordered else float("nan")


async def cycles(nodes: list[ServerProcess]) -> tuple[dict[str, list[float]], int, int]:
    """Latencies by verb, cycles that failed, and startrecord answers of 4001."""
    latencies: dict[str, list[float]] = defaultdict(list)
    failed = refused = 0
    turn = 0
    gate = asyncio.Semaphore(CONCURRENCY)

    async def call(client: httpx.AsyncClient, verb: str, body: dict) -> dict:
        nonlocal turn
        node = nodes[turn % len(nodes)]
        turn += 1
        t0 = time.perf_counter()
        data = (await client.post(node.api(verb), json=body)).json()
        latencies[verb].append(time.perf_counter() - t0)
        return dict(data)

    async def cycle(client: httpx.AsyncClient, i: int) -> None:
        nonlocal failed, refused
        room = f"room{i % ROOMS}"
        async with gate:
            resid = (await call(client, "applyrecord", {}))["resid"]
            body = {"resid": resid, "appid": APPID, "roomid": room, "recordtype": 0,
                    "streamtype": 2, "uid": "u0", "storagecfg": STORAGE}
            for _ in range(20):
                started = await call(client, "startrecord", body)
                if started["code"] != 4001:
                    break
                refused += 1
                await asyncio.sleep(0.5)
            if started["code"] != 0:
                failed += 1
                return
            await asyncio.sleep(HOLD_S)
            stopped = await call(client, "stoprecord", {"resid": resid, "appid": APPID,
                                                       "roomid": room,
                                                       "recordid": started["recordid"]})
            failed += stopped["code"] != 0

    async with httpx.AsyncClient(headers=HEADERS, timeout=60) as client:
        await asyncio.gather(*(cycle(client, i) for i in range(CYCLES)))
    return latencies, failed, refused


Result = tuple[dict[str, list[float]], int, int, float]  # latencies, failed, refused, wall


def measure(nodes: list[ServerProcess], clip: Path) -> Result:
    rooms = [f"room{i}" for i in range(ROOMS)]
    pubs = [start_publishers(node, "", [f"{r}/u0" for r in rooms[k::len(nodes)]], clip)
            for k, node in enumerate(nodes)]
    try:
        for proc in pubs:
            wait_ready(proc)
        time.sleep(2)
        t0 = time.perf_counter()
        latencies, failed, refused = asyncio.run(cycles(nodes))
        wall = time.perf_counter() - t0
    finally:
        for proc in pubs:
            proc.terminate()
        for proc in pubs:
            proc.wait(15)
    return latencies, failed, refused, wall


def summary(name: str, result: Result) -> str:
    lat, failed, refused, wall = result
    return (f"{name}: {CYCLES - failed}/{CYCLES} cycles ok in {wall:.1f} s; startrecord p50 "
            f"{pct(lat['startrecord'], 0.5):.0f} ms p99 {pct(lat['startrecord'], 0.99):.0f} ms "
            f"({refused} answered 4001 and retried); applyrecord p99 "
            f"{pct(lat['applyrecord'], 0.99):.0f} ms; stoprecord p99 "
            f"{pct(lat['stoprecord'], 0.99):.0f} ms")


def run(clip: Path | None = None) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="cloudrec-cluster-") as tmp:
        tmp_path = Path(tmp)
        if clip is None:
            clip = Path(make_clip(str(tmp_path / "clip.mkv"), seconds=6, width=640, height=480,
                                  fps=15, bitrate=1_000_000, voice=True, audio_channels=1))
        single = start_server(tmp_path / "single", quiet=True, **SETTINGS)
        try:
            alone = measure([single], clip)
        finally:
            single.stop()
        pg_url, stop_pg = start_postgres()
        redis_url, stop_redis = start_redis()
        nodes: list[ServerProcess] = []
        try:
            for name in ("A", "B", "C"):
                nodes.append(start_server(tmp_path / name, quiet=True, node_id=name,
                                          database_url=pg_url, redis_url=redis_url,
                                          cluster_secret="bench-cluster-secret", **SETTINGS))
            cluster = measure(nodes, clip)
        finally:
            for node in nodes:
                node.stop()
            stop_redis()
            stop_pg()
    p99 = pct(cluster[0]["startrecord"], 0.99) / pct(alone[0]["startrecord"], 0.99)
    return [f"cluster: {CYCLES} apply/start/stop cycles, {CONCURRENCY} concurrent, over {ROOMS} "
            f"publishing rooms, each call to the next node in turn",
            summary("  3 nodes (PostgreSQL + Redis)", cluster),
            summary("  1 node (SQLite, reference)", alone),
            f"  startrecord p99, 3 nodes / 1 node: {p99:.2f}x"]


if __name__ == "__main__":
    print("\n".join(run()), flush=True)
