"""Load: 50 concurrent applyrecord → startrecord → queryrecord → stoprecord cycles spread over
10 publishing rooms (clip publishers in their own process). All must succeed, no task may be
left running, and we report the API latency under that load."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path
from urllib.parse import urlsplit

import loadgen
from common import APPID, HEADERS, ServerProcess, start_publishers, wait_ready

STORAGE = {"vender": 101, "endpoint": "local", "bucket": "load", "accesskey": "-", "secretkey": "-"}


async def _cycle(server: ServerProcess, room: str, record_s: float, latencies: list[float]) -> bool:
    parts = urlsplit(server.base)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)

    async def call(method: str, what: str, body: object | None) -> dict[str, object]:
        url = server.api(what)
        t0 = time.perf_counter()
        writer.write(loadgen.build_request(method, url, HEADERS, body))
        data = json.loads(await loadgen._read_response(reader))
        latencies.append(time.perf_counter() - t0)
        return dict(data)

    try:
        resid = (await call("POST", "applyrecord", {}))["resid"]
        started = await call("POST", "startrecord", {
            "resid": resid, "appid": APPID, "roomid": room, "recordtype": 0, "streamtype": 2,
            "uid": "u0", "storagecfg": STORAGE})
        if started["code"] != 0:
            return False
        recordid = started["recordid"]
        await asyncio.sleep(record_s)
        query = await call("GET", f"queryrecord/{room}/{recordid}", None)
        stopped = await call("POST", "stoprecord", {"resid": resid, "appid": APPID, "roomid": room,
                                                    "recordid": recordid})
        return query["code"] == 0 and stopped["code"] == 0
    finally:
        writer.close()


def run(server: ServerProcess, clip: Path, cycles: int = 50, rooms: int = 10,
        record_s: float = 3.0) -> list[str]:
    names = [f"load{i}" for i in range(rooms)]
    pubs = start_publishers(server, names[0], [f"{room}/u0" for room in names], clip)
    try:
        wait_ready(pubs)
        time.sleep(1)
        latencies: list[float] = []

        async def all_cycles() -> list[bool]:
            return await asyncio.gather(*(_cycle(server, names[i % rooms], record_s, latencies)
                                          for i in range(cycles)))

        t0 = time.perf_counter()
        ok = asyncio.run(all_cycles())
        wall = time.perf_counter() - t0
        import httpx

        # the task store's word (a worker's count in /healthz is as of its last status report)
        active = httpx.get(server.api("listrecord"), params={"state": "active", "limit": 1000},
                           headers=HEADERS).json()
        running = len(active["data"]["records"])
    finally:
        pubs.terminate()
        pubs.wait(10)
    latencies.sort()
    return [f"load {cycles} concurrent cycles over {rooms} rooms: {sum(ok)}/{cycles} succeeded, "
            f"{running} tasks left running, {wall:.1f} s; API p50 "
            f"{statistics.median(latencies) * 1000:.1f} ms, p99 "
            f"{latencies[int(len(latencies) * 0.99) - 1] * 1000:.1f} ms ({len(latencies)} calls)"]
