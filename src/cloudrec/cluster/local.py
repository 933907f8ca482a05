"""The directory of one node, in memory: its own workers are the whole cluster."""

from __future__ import annotations

import asyncio
import time

from cloudrec.cluster.directory import (
    DEFAULT_COST,
    ClusterFull,
    RoomKey,
    WorkerInfo,
    choose,
    fresh,
    room_name,
)

RESERVATION_S = 5.0  # how long an accepted recording counts before the CPU shows it


class LocalDirectory:
    def __init__(self, lease_s: float = 6.0) -> None:
        self.lease_s = lease_s
        self._workers: dict[str, WorkerInfo] = {}
        self._claims: dict[str, tuple[str, float]] = {}  # room → (worker id, expires)
        self._reservations: dict[str, list[tuple[float, float]]] = {}  # worker → (expires, cost)
        self._lock = asyncio.Lock()  # room creation is serialised: a room is never made twice

    async def heartbeat(self, node: str, workers: list[WorkerInfo]) -> None:
        now = time.time()
        for gone in [w for w, info in self._workers.items()
                     if info.node == node and w not in {x.id for x in workers}]:
            del self._workers[gone]
        for info in workers:
            self._workers[info.id] = info
            if info.committed >= 0:  # its committed cost now counts what was reserved before
                made_before = info.updated + RESERVATION_S
                self._reservations[info.id] = [
                    (t, c) for t, c in self._reservations.get(info.id, []) if t > made_before]
            for room in info.rooms:
                self._claims[room] = (info.id, now + self.lease_s)

    async def forget_node(self, node: str) -> None:
        ids = {w for w, info in self._workers.items() if info.node == node}
        for w in ids:
            del self._workers[w]
        for room, (w, _) in list(self._claims.items()):
            if w in ids:
                del self._claims[room]

    async def workers(self) -> list[WorkerInfo]:
        now = time.time()
        return [w for w in self._workers.values() if fresh(w, self.lease_s, now)]

    async def owner(self, key: RoomKey) -> WorkerInfo | None:
        claim = self._claims.get(room_name(key))
        if claim is None or claim[1] < time.time():
            return None
        info = self._workers.get(claim[0])
        return info if info is not None and fresh(info, self.lease_s) else None

    async def place(self, key: RoomKey, prefer: str | None = None) -> WorkerInfo:
        async with self._lock:
            owner = await self.owner(key)
            if owner is not None:
                return owner
            workers = await self.workers()
            reserved = {w.id: await self.reserved(w.id) for w in workers}
            chosen = choose(workers, reserved, prefer)
            self._claims[room_name(key)] = (chosen.id, time.time() + self.lease_s)
            await self.reserve(chosen.id, DEFAULT_COST)  # until its publishers show in the CPU
            return chosen

    async def reserve(self, worker_id: str, cost: float) -> None:
        self._reservations.setdefault(worker_id, []).append((time.time() + RESERVATION_S, cost))

    async def unreserve(self, worker_id: str) -> None:
        live = self._reservations.get(worker_id)
        if live:
            live.pop(0)

    async def reserved(self, worker_id: str) -> float:
        now = time.time()
        live = [(t, c) for t, c in self._reservations.get(worker_id, []) if t > now]
        self._reservations[worker_id] = live
        return sum(c for _, c in live)

    async def close(self) -> None:
        pass


__all__ = ["ClusterFull", "LocalDirectory"]
