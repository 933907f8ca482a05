"""A node's front: the one public port. It answers the API and WHIP signalling and sends each
request to the worker that owns the room, on this node or another.

- Placement: a room with no live owner goes to the worker with the most spare capacity
  (measured CPU less reservations, and the optional recordings cap), claimed atomically in the
  directory. A full cluster refuses at once: WHIP ``503``, ``startrecord`` 4001.
- WHIP: the offer is proxied to the room's worker, on this node or another, and the answer
  comes back: its ICE candidates are that worker's, so the media goes straight to it. (A
  ``307`` to the other node would do too, but HTTP clients drop the ``Authorization`` header
  on a redirect to another origin, and browsers with it.) The WHIP session id names the
  worker, so a ``DELETE`` to any node reaches it.
- API: auth, rate limits and validation happen here; the verb runs on the room's worker. A
  task whose room has no live owner (its node died and no publisher came back yet) is read and
  stopped in the shared task store.
- Failure: each heartbeat publishes this node's workers and renews their rooms' leases. When a
  room is placed anew, the active tasks of that room whose worker is gone are handed to the new
  owner, which resumes them into the same playlist. A task whose worker is gone and whose room
  never comes back is failed after ``idle_timeout_s`` (reason ``error``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import secrets
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

from cloudrec.cluster import ClusterFull, Directory, WorkerInfo
from cloudrec.cluster.costs import recording_kind
from cloudrec.config import Settings, node_name, worker_count
from cloudrec.errors import CapacityError, CloudrecError, InternalError, RecordingError
from cloudrec.models import StartRecordRequest, StopRecordRequest, UpdateMixRecordRequest
from cloudrec.models.rules import check_push_urls, not_publishing, start_rooms, webpage_cost
from cloudrec.tasks import TaskService, TaskStore
from cloudrec.workers import HttpWorkerClient, LocalWorkerClient, WorkerClient
from cloudrec.workers.client import InProcessWorker
from cloudrec.workers.supervisor import Supervisor

log = logging.getLogger(__name__)

T = TypeVar("T")

HEARTBEAT_S = 1.0
SWEEP_S = 5.0


class Front:
    def __init__(self, settings: Settings, directory: Directory, tasks: TaskStore,
                 outbox: Any) -> None:
        self.settings = settings
        self.directory = directory
        self.tasks = tasks
        self.outbox = outbox
        self.node = node_name(settings)
        if settings.redis_url and not settings.cluster_secret:
            raise ValueError("a cluster (redis_url) needs cluster_secret: the same on every node")
        self.secret = settings.cluster_secret or secrets.token_hex(16)
        self.count = worker_count(settings)
        self.local: InProcessWorker | None = (self._in_process_worker() if self.count == 1
                                              else None)
        self.supervisor: Supervisor | None = None
        self.stored = TaskService(tasks, outbox)  # answers for tasks whose worker is gone
        self.push_protocols: frozenset[str] | None = None  # what the workers can push to
        self.infos: list[WorkerInfo] = []
        self.worker_metrics: dict[str, dict[str, Any]] = {}  # worker id -> its latest counters
        self.draining = False
        self._remote: dict[str, HttpWorkerClient] = {}
        self._orphaned_since: dict[str, float] = {}
        self._loops: list[asyncio.Task[None]] = []
        self.push: Any = None  # the RTMP/SRT listeners (cloudrec.ingest.gateway.PushGateway)
        self.periodic: list[tuple[float, Any]] = []  # (period, coroutine function) run while open

    def _in_process_worker(self) -> InProcessWorker:
        """``workers = 1``: the front is its own worker. The only place the front loads the
        media plane."""
        from cloudrec.workers.worker import Worker

        return Worker(self.settings, 0, self.node, self.tasks, self.outbox,
                      front_url=self.settings.base_url, secret=self.secret)

    # -- lifecycle ------------------------------------------------------------------------------

    async def open(self) -> None:
        if self.local is not None:
            self.local.locate = self.locate_relay
            await self.local.open()
        else:
            self.supervisor = Supervisor(self.settings, self.node, self.secret, self.count,
                                         front_url=self.settings.base_url)
            await self.supervisor.start()
        await self.heartbeat()
        loop = asyncio.get_running_loop()
        self._loops = [loop.create_task(self._every(HEARTBEAT_S, self.heartbeat)),
                       loop.create_task(self._every(SWEEP_S, self.sweep_orphans))]
        self._loops += [loop.create_task(self._every(period, work))
                        for period, work in self.periodic]
        await self._open_push()

    async def _open_push(self) -> None:
        """The RTMP and SRT listeners (``rtmp_port``, ``srt_port``; 0 turns one off). They
        move bytes only: the ingest package's front side loads no media library."""
        s = self.settings
        if not (s.rtmp_port or s.srt_port):
            return
        from cloudrec.ingest.gateway import PushGateway

        def secret_for(appid: int) -> str | None:
            app = s.app(appid)
            return app.secret if app else None

        self.push = PushGateway(self, secret_for)
        await self.push.start(s.host, s.rtmp_port, s.srt_port, s.tls_cert, s.tls_key)

    async def close(self) -> None:
        """Drain: take no new rooms, finish this node's recordings, leave the cluster."""
        self.draining = True
        if self.push is not None:
            await self.push.close()
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        try:
            await self.heartbeat()
        except Exception:
            log.exception("last heartbeat failed")
        if self.local is not None:
            await self.local.close()
        if self.supervisor is not None:
            await self.supervisor.stop(grace_s=self.settings.stop_timeout_s + 5.0)
        try:
            await self.directory.forget_node(self.node)
        except Exception:
            log.exception("leaving the cluster failed")
        for client in self._remote.values():
            await client.close()

    async def _every(self, period: float, work: Any) -> None:
        while True:
            await asyncio.sleep(period)
            try:
                await work()
            except Exception:  # a directory or store hiccup: log it, try again next period
                log.exception("%s failed", getattr(work, "__name__", work))

    # -- workers and their load -----------------------------------------------------------------

    async def heartbeat(self) -> None:
        statuses: list[tuple[dict[str, Any], str]] = []
        asked = time.time()  # a reservation made after this is not yet in a status
        if self.local is not None:
            local = await LocalWorkerClient(self.local).status()
            statuses.append((local, self.settings.base_url))
        elif self.supervisor is not None:
            slots = list(self.supervisor.slots.values())
            results = await asyncio.gather(*(self.supervisor.status(s) for s in slots))
            statuses.extend((st, slot.url) for st, slot in zip(results, slots) if st is not None)
        infos = [WorkerInfo(
            id=st["id"], node=self.node, url=url, public_url=self.settings.base_url,
            relay=st.get("relay", ""), cpu=float(st["cpu"]), capacity=self.settings.max_cpu,
            committed=float(st.get("committed", -1.0)), costs=dict(st.get("costs") or {}),
            recordings=int(st["recordings"]), publishers=int(st["publishers"]),
            max_recordings=self.settings.max_recordings, draining=self.draining,
            rooms=tuple(st["rooms"]), pid=int(st.get("pid", 0)), updated=asked)
            for st, url in statuses]
        self.infos = infos
        self.worker_metrics = {str(st["id"]): st.get("metrics") or {} for st, _ in statuses}
        for st, _ in statuses:
            if st.get("push") is not None:
                self.push_protocols = frozenset(st["push"])
        await self.directory.heartbeat(self.node, infos)

    def client_for(self, info: WorkerInfo) -> WorkerClient:
        if self.local is not None and info.id == self.local.id:
            return LocalWorkerClient(self.local)
        if self.supervisor is not None:
            for slot in self.supervisor.slots.values():
                if slot.id == info.id:
                    return slot.client
        client = self._remote.get(info.url)
        if client is None:
            client = self._remote[info.url] = HttpWorkerClient(info.url, self.secret)
        return client

    async def _place(self, appid: int, roomid: str, prefer: str | None = None) -> WorkerInfo:
        """The room's live owner, or a new placement (whose orphaned tasks it adopts)."""
        owner = await self.directory.owner((appid, roomid))
        if owner is not None:
            return owner
        if self.draining:
            raise CapacityError("this node is draining (shutting down); publish to another node")
        try:
            owner = await self.directory.place((appid, roomid), prefer=prefer)
        except ClusterFull as exc:
            log.warning("refused room %s/%s: %s", appid, roomid, exc.message)
            raise
        await self._adopt_orphans(appid, roomid, owner)
        return owner

    async def _adopt_orphans(self, appid: int, roomid: str, owner: WorkerInfo) -> None:
        live = {w.id for w in await self.directory.workers()}
        orphans = [t.recordid for t in self.tasks.active_tasks_in_room(appid, roomid)
                   if t.owner is not None and t.owner not in live]
        if orphans:
            log.info("room %s/%s placed on %s: it takes over %d task(s) whose worker is gone",
                     appid, roomid, owner.id, len(orphans))
            await self.client_for(owner).adopt(orphans)

    async def sweep_orphans(self) -> None:
        """Fail tasks whose worker is gone and whose room did not come back in time."""
        live = {w.id for w in await self.directory.workers()}
        now = time.monotonic()
        seen: set[str] = set()
        for task in self.tasks.active_tasks():
            if task.owner is None or task.owner in live:
                continue
            seen.add(task.recordid)
            since = self._orphaned_since.setdefault(task.recordid, now)
            if now - since < self.settings.idle_timeout_s + self.directory.lease_s:
                continue
            if not self.tasks.claim_task(task.recordid, f"{self.node}/sweeper", task.owner):
                continue  # another node's front did it, or the task was adopted
            error = (f"its worker {task.owner} stopped and no publisher of the room returned "
                     f"within {self.settings.idle_timeout_s:.0f} s")
            log.warning("recording %s failed: %s", task.recordid, error)
            self.stored.fail(task, error)
        for recordid in set(self._orphaned_since) - seen:
            del self._orphaned_since[recordid]

    async def locate_relay(self, key: tuple[int, str]) -> str | None:
        """The relay address of the worker that owns a room (for a mix reading it)."""
        owner = await self.directory.owner(key)
        return owner.relay if owner is not None else None

    async def _session_worker(self, session_id: str) -> tuple[WorkerInfo, str] | None:
        """The worker a WHIP or WHEP session id names, and the worker's own session id; None
        for an id that names no known worker."""
        worker, _, session = session_id.partition(".")
        try:
            worker_id = base64.urlsafe_b64decode(worker + "=" * (-len(worker) % 4)).decode()
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return None
        info = next((w for w in self.infos if w.id == worker_id), None)
        if info is None:
            info = next((w for w in await self.directory.workers() if w.id == worker_id), None)
        if info is None or not session:
            return None
        return info, session

    # -- WHIP -----------------------------------------------------------------------------------

    async def publish(self, appid: int, roomid: str, uid: str, offer_sdp: str) -> tuple[str, str]:
        owner = await _shared(self._place(appid, roomid))
        answer, session = await self.client_for(owner).publish(appid, roomid, uid, offer_sdp)
        return answer, _session_id(owner, session)

    async def unpublish(self, session_id: str) -> bool:
        found = await self._session_worker(session_id)
        return found is not None and await self.client_for(found[0]).unpublish(found[1])

    # -- WHEP and the room page ----------------------------------------------------------------

    async def play(self, appid: int, roomid: str, uid: str, offer_sdp: str) -> tuple[str, str]:
        """A WHEP offer, answered by the worker that owns the room; the session id names that
        worker, as WHIP's does. RecordingError 4005 when the room has no owner."""
        owner = await _shared(self.directory.owner((appid, roomid)))
        if owner is None:
            raise RecordingError(f"uid {uid!r} is not publishing in room {roomid!r}", 4005)
        answer, session = await self.client_for(owner).play(appid, roomid, uid, offer_sdp)
        return answer, _session_id(owner, session)

    async def stop_play(self, session_id: str) -> bool:
        found = await self._session_worker(session_id)
        return found is not None and await self.client_for(found[0]).stop_play(found[1])

    async def room_publishers(self, appid: int, roomid: str) -> list[str]:
        """The uids publishing in a room, in join order, from the worker that owns it (none
        when no worker does)."""
        owner = await self.directory.owner((appid, roomid))
        if owner is None:
            return []
        return await self.client_for(owner).room_publishers(appid, roomid, timeout=5.0)

    # -- the API's verbs ------------------------------------------------------------------------

    async def start(self, appid: int, req: StartRecordRequest) -> str:
        if self.push_protocols is not None:  # 2101 comes before the resid's codes
            check_push_urls(req.outputs, self.push_protocols)
        named = start_rooms(req)
        rooms = list(dict.fromkeys([req.roomid, *named]))
        owners = {room: await self.directory.owner((appid, room)) for room in rooms}
        target = owners[req.roomid] or next((o for o in owners.values() if o is not None), None)
        extra = webpage_cost(req)  # a web page needs no publisher, and costs a browser
        if target is None and extra:
            self.tasks.check_resid(appid, req.resid)
            target = await self.directory.place((appid, req.roomid))
        if target is None:
            self.tasks.check_resid(appid, req.resid)  # 4012/4011 come before 4005
            raise not_publishing(named)
        if owners[req.roomid] is None:  # a mix whose own room has no publisher: hold it there
            target = await self.directory.place((appid, req.roomid), prefer=target.id)
        cost = target.cost_of(*recording_kind(req.model_dump(mode="json"))) + extra
        why = target.refused(await self.directory.reserved(target.id), cost=cost)
        if why is not None:
            self.tasks.check_resid(appid, req.resid)
            raise CapacityError(f"no capacity for a new recording: worker {target.id}, which "
                                f"holds room {req.roomid!r}, is full ({why}); retry later")
        remote = [room for room, o in owners.items() if o is not None and o.id != target.id]
        recordid = await self.client_for(target).start(appid, req, remote)
        await self.directory.reserve(target.id, cost)
        return recordid

    async def stop(self, appid: int, req: StopRecordRequest) -> dict[str, Any]:
        """``{"recordid", "files"}``: the task's file list as it ended (or as it is, when it
        had not finished storing its files within ``stop_timeout_s``)."""
        owner = await self.directory.owner((appid, req.roomid))
        if owner is None:
            recordid = self.stored.stop(appid, req)
            return {"recordid": recordid, "files": self.stored.files(recordid)}
        stopped = await self.client_for(owner).stop(appid, req)
        await self.directory.unreserve(owner.id)  # if its start was recent, it never shows
        return stopped

    async def pause(self, appid: int, req: StopRecordRequest, *, resume: bool = False
                    ) -> dict[str, Any]:
        """pauserecord / resumerecord, routed like stoprecord; ``{"recordid", "paused",
        "pausetime", ...}``."""
        owner = await self.directory.owner((appid, req.roomid))
        if owner is None:
            return self.stored.pause(appid, req, resume=resume)
        client = self.client_for(owner)
        return await (client.resume if resume else client.pause)(appid, req)

    async def update(self, appid: int, req: UpdateMixRecordRequest) -> str:
        owner = await self.directory.owner((appid, req.roomid))
        if owner is None:
            return self.stored.update(appid, req)
        return await self.client_for(owner).update(appid, req)

    async def query(self, appid: int, roomid: str, recordid: str) -> dict[str, Any]:
        owner = await self.directory.owner((appid, roomid))
        if owner is None:
            return self.stored.query(appid, roomid, recordid)
        return await self.client_for(owner).query(appid, roomid, recordid)

    def apply(self, appid: int) -> str:
        return self.tasks.apply(appid)

    # -- for /healthz and the console -----------------------------------------------------------

    async def publications(self) -> list[dict[str, Any]]:
        """Every publisher of the cluster, with its worker and node (a worker that does not
        answer is left out)."""
        workers = await self.directory.workers()
        results = await asyncio.gather(
            *(self.client_for(w).publications(timeout=5.0) for w in workers),
            return_exceptions=True)
        out: list[dict[str, Any]] = []
        for w, result in zip(workers, results):
            if isinstance(result, BaseException):
                log.warning("worker %s did not list its publications: %s", w.id, result)
                continue
            out.extend({**p, "worker": w.id, "node": w.node} for p in result)
        return out

    def recordings(self) -> int:
        return sum(w.recordings for w in self.infos)


def _session_id(owner: WorkerInfo, session: str) -> str:
    """A WHIP or WHEP session id that names the worker holding the session."""
    worker = base64.urlsafe_b64encode(owner.id.encode()).decode().rstrip("=")
    return f"{worker}.{session}"


async def _shared(step: Awaitable[T]) -> T:
    """What the cluster's shared state (the directory in Redis, the tasks in PostgreSQL) answers;
    a failure to answer (one of them out of reach, restarting) as InternalError: a WHIP or WHEP
    offer then gets 503 with Retry-After, never the 400 of an offer that cannot be answered."""
    try:
        return await step
    except CloudrecError:
        raise
    except Exception as exc:
        raise InternalError(f"the cluster's shared state is out of reach: {exc}") from exc
