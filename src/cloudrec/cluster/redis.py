"""The directory of a cluster, in Redis: every node sees the same rooms and workers.

Keys (prefix ``cloudrec:``):

- ``worker:{id}``: the worker's :class:`WorkerInfo` as JSON, expiring after ``lease_s``; the
  set ``workers`` lists the ids ever seen (stale ones are pruned on read).
- ``room:{appid}/{roomid}``: the id of the worker holding the room, expiring after
  ``lease_s``. Claimed with ``SET NX`` (a room is never placed twice) and renewed by its
  owner's heartbeat. A node killed with SIGKILL stops renewing: its rooms and workers are free
  ``lease_s`` seconds later.
- ``reserve:{id}``: a sorted set of recent reservations (score: when they expire).
"""

from __future__ import annotations

import json
import secrets
import time
from typing import cast

import redis.asyncio as aioredis

from cloudrec.cluster.directory import DEFAULT_COST, RoomKey, WorkerInfo, choose, fresh, room_name
from cloudrec.cluster.local import RESERVATION_S

PREFIX = "cloudrec:"

# Renew a room's lease if this worker holds it or nobody does; never take it from another.
_RENEW = """
local cur = redis.call('GET', KEYS[1])
if cur == false or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""


class RedisDirectory:
    def __init__(self, url: str, lease_s: float = 6.0) -> None:
        self.lease_s = lease_s
        # decode_responses: every reply is a str (redis-py types them ``bytes | str``, hence
        # the casts below)
        self._redis = aioredis.from_url(url, decode_responses=True, socket_timeout=2.0,
                                        socket_connect_timeout=2.0)
        self._renew = self._redis.register_script(_RENEW)
        self._lease_ms = int(lease_s * 1000)

    async def heartbeat(self, node: str, workers: list[WorkerInfo]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for info in workers:
                pipe.set(PREFIX + "worker:" + info.id, json.dumps(info.to_json()),
                         px=self._lease_ms)
                pipe.sadd(PREFIX + "workers", info.id)
            await pipe.execute()
        for info in workers:
            if info.committed >= 0:  # its committed cost now counts what was reserved before
                await self._redis.zremrangebyscore(PREFIX + "reserve:" + info.id, 0,
                                                   info.updated + RESERVATION_S)
            for room in info.rooms:
                await self._renew(keys=[PREFIX + "room:" + room], args=[info.id, self._lease_ms])

    async def forget_node(self, node: str) -> None:
        ids = cast(set[str], await self._redis.smembers(PREFIX + "workers"))
        mine = [w for w in ids if w.rsplit("/", 1)[0] == node]
        for worker_id in mine:
            raw = await self._redis.get(PREFIX + "worker:" + worker_id)
            if raw:
                for room in json.loads(raw).get("rooms") or ():
                    key = PREFIX + "room:" + room
                    if await self._redis.get(key) == worker_id:
                        await self._redis.delete(key)
            await self._redis.delete(PREFIX + "worker:" + worker_id)
            await self._redis.srem(PREFIX + "workers", worker_id)

    async def workers(self) -> list[WorkerInfo]:
        ids = sorted(cast(set[str], await self._redis.smembers(PREFIX + "workers")))
        if not ids:
            return []
        raws = await self._redis.mget([PREFIX + "worker:" + w for w in ids])
        now = time.time()
        out: list[WorkerInfo] = []
        for worker_id, raw in zip(ids, raws):
            if raw is None:
                await self._redis.srem(PREFIX + "workers", worker_id)
                continue
            info = WorkerInfo.from_json(json.loads(raw))
            if fresh(info, self.lease_s, now):
                out.append(info)
        return out

    async def _worker(self, worker_id: str) -> WorkerInfo | None:
        raw = await self._redis.get(PREFIX + "worker:" + worker_id)
        if raw is None:
            return None
        info = WorkerInfo.from_json(json.loads(raw))
        return info if fresh(info, self.lease_s) else None

    async def owner(self, key: RoomKey) -> WorkerInfo | None:
        worker_id = cast(str | None, await self._redis.get(PREFIX + "room:" + room_name(key)))
        return None if worker_id is None else await self._worker(worker_id)

    async def place(self, key: RoomKey, prefer: str | None = None) -> WorkerInfo:
        for _ in range(5):
            owner = await self.owner(key)
            if owner is not None:
                return owner
            workers = await self.workers()
            reserved = {w.id: await self.reserved(w.id) for w in workers}
            chosen = choose(workers, reserved, prefer)
            room_key = PREFIX + "room:" + room_name(key)
            current = cast(str | None, await self._redis.get(room_key))
            if current is not None and await self._worker(current) is None:
                await self._redis.delete(room_key)  # held by a worker that is gone
            if await self._redis.set(room_key, chosen.id, nx=True, px=self._lease_ms):
                await self.reserve(chosen.id, DEFAULT_COST)  # until its publishers show in the CPU
                return chosen
        owner = await self.owner(key)
        if owner is None:
            raise RuntimeError(f"room {room_name(key)} could not be placed")
        return owner

    async def reserve(self, worker_id: str, cost: float) -> None:
        key = PREFIX + "reserve:" + worker_id
        member = f"{cost:.4f}:{secrets.token_hex(4)}"
        await self._redis.zadd(key, {member: time.time() + RESERVATION_S})
        await self._redis.pexpire(key, int(RESERVATION_S * 2000))

    async def unreserve(self, worker_id: str) -> None:
        await self._redis.zpopmin(PREFIX + "reserve:" + worker_id)

    async def reserved(self, worker_id: str) -> float:
        key = PREFIX + "reserve:" + worker_id
        now = time.time()
        await self._redis.zremrangebyscore(key, 0, now)
        members = cast(list[str], await self._redis.zrange(key, 0, -1))
        return sum(float(m.split(":", 1)[0]) for m in members)

    async def close(self) -> None:
        await self._redis.aclose()
