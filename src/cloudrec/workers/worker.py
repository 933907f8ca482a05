"""One worker: the rooms it owns (a :class:`RoomHub`), the WebRTC publishers that write into
them (a :class:`WebRtcIngest`) and the recordings that read them.

The front calls these methods through a :class:`~cloudrec.workers.client.WorkerClient`, in
process or over HTTP (:mod:`cloudrec.workers.internal`). The worker
writes task state and callback events to the node's shared stores itself; it never talks to
the cluster directory: the front publishes its status (:meth:`Worker.status`) for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx

from cloudrec.callbacks import CallbackOutbox
from cloudrec.cluster import worker_id
from cloudrec.cluster.costs import CostModel, recording_kind
from cloudrec.config import Settings
from cloudrec.ingest.publisher import PushIngest
from cloudrec.ingress import IngressStore
from cloudrec.ingress.autorecord import AutoRecorder
from cloudrec.ingress.manager import IngressManager
from cloudrec.media.push.fanout import push_protocols
from cloudrec.metrics import worker_snapshot
from cloudrec.models import StartRecordRequest, StopRecordRequest, UpdateMixRecordRequest
from cloudrec.recorder import RecordingService
from cloudrec.relay import RelayLinks, RelayServer
from cloudrec.rooms import RoomHub, RoomKey
from cloudrec.tasks import TaskStore
from cloudrec.webrtc.ingest import WebRtcIngest
from cloudrec.webrtc.viewer import WebRtcViewers
from cloudrec.workers.load import CpuMeter

log = logging.getLogger(__name__)

RELAY_CHECK_S = 2.0  # how often rooms relayed from elsewhere are looked up again
Locate = Callable[[RoomKey], Awaitable[str | None]]


class Worker:
    def __init__(self, settings: Settings, index: int, node: str, tasks: TaskStore,
                 outbox: CallbackOutbox | None, hub: RoomHub | None = None, *,
                 front_url: str = "", secret: str = "") -> None:
        self.settings = settings
        self.index = index
        self.id = worker_id(node, index)
        self.hub = hub or RoomHub()
        self.webrtc = WebRtcIngest(self.hub, **webrtc_options(settings))
        self.viewers = WebRtcViewers(self.hub, ice=self.webrtc.ice,
                                     max_viewers=settings.max_viewers,
                                     publisher_wait_s=settings.idle_timeout_s)
        self.push = PushIngest(self.hub)  # RTMP and SRT publishers, their streams from the front
        self.tasks = tasks
        self.service = RecordingService(settings, tasks, self.hub, outbox, worker_id=self.id,
                                        claim_unowned=index == 0)
        self.ingress_store = IngressStore(tasks.database)
        self.ingress = IngressManager(self.hub, self.ingress_store, self.id,
                                      allow_private=settings.allow_private_urls)
        self.autorecord = AutoRecorder(self.hub, self.service, tasks, self.ingress_store)
        self.cpu = CpuMeter()
        self.costs = CostModel()  # what each kind of recording costs here, learned
        self.front_url = front_url  # where to ask who owns a room (relayed mix inputs)
        self.secret = secret
        # Rooms that recordings here read but that live on another worker: their encoded media
        # comes over a relay from the owner (the relay never decodes).
        self.relay_server = RelayServer(self.hub, secret or "local",
                                        host=settings.internal_host or settings.host)
        self.relays = RelayLinks(self.hub, secret or "local")
        self.relay_address = ""
        self.locate: Locate = self._locate_by_front
        self._relay_loop: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.hub.on_room_subscribed = self._want_room
        self.hub.on_room_unsubscribed = self._unwant_room

    async def open(self) -> None:
        await self.relay_server.start()
        self.relay_address = self.relay_server.address
        self._relay_loop = asyncio.get_running_loop().create_task(self._follow_relays())
        await self.service.recover()
        await self.ingress.recover()

    async def close(self) -> None:
        await self.autorecord.close()
        await self.ingress.close()
        await self.service.shutdown()
        if self._relay_loop is not None:
            self._relay_loop.cancel()
        await self.relays.close()
        await self.relay_server.close()
        await self.viewers.close()
        await self.webrtc.close()
        await self.push.close()
        await self.hub.close()

    # -- relayed rooms --------------------------------------------------------------------------

    def _want_room(self, key: RoomKey) -> None:
        self._wake.set()  # look its owner up now, not at the next round

    def _unwant_room(self, key: RoomKey) -> None:
        self.relays.release(*key)

    async def _follow_relays(self) -> None:
        """Keep one relay per wanted room from its current owner: look the owner up when a
        recording first reads the room and every few seconds after (it may publish later, or
        move when its node dies)."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RELAY_CHECK_S):
                    await self._wake.wait()
            self._wake.clear()
            # every room read here, also one whose local publishers left (it may return on
            # another worker)
            for key in self.hub.read_rooms():
                try:
                    await self._follow(key)
                except Exception as exc:  # the owner's relay may be down: next round
                    log.warning("relay of room %s/%s: %s", *key, exc)

    async def _follow(self, key: RoomKey) -> None:
        if self.hub.is_publishing(*key, relayed=False):
            self.relays.release(*key)  # the room lives here now
            return
        address = await self.locate(key)
        current = self.relays.addresses.get(key, [])
        if address == self.relay_address:
            address = None
        for old in current:
            if old != address:
                log.info("room %s/%s no longer relayed from %s", *key, old)
                self.relays.release(*key, old)
        if address and address not in current and key in set(self.hub.read_rooms()):
            await self.relays.ensure(key[0], key[1], address)
            log.info("room %s/%s relayed from %s", *key, address)

    async def _locate_by_front(self, key: RoomKey) -> str | None:
        async with httpx.AsyncClient(timeout=5.0) as http:
            r = await http.post(f"{self.front_url}/cluster/locate",
                                json={"appid": key[0], "roomid": key[1]},
                                headers={"X-Cloudrec-Internal": self.secret})
            r.raise_for_status()
            return r.json().get("relay") or None

    # -- rooms ----------------------------------------------------------------------------------

    async def publish(self, appid: int, roomid: str, uid: str, sdp: str) -> dict[str, Any]:
        answer, session = await self.webrtc.publish(appid, roomid, uid, sdp)
        return {"answer": answer, "session": session}

    async def unpublish(self, session: str) -> dict[str, Any]:
        return {"found": await self.webrtc.unpublish(session)}

    async def play(self, appid: int, roomid: str, uid: str, sdp: str) -> dict[str, Any]:
        """A WHEP viewer of ``uid`` (:mod:`cloudrec.webrtc.viewer`)."""
        answer, session = await self.viewers.play(appid, roomid, uid, sdp)
        return {"answer": answer, "session": session}

    async def stop_play(self, session: str) -> dict[str, Any]:
        return {"found": await self.viewers.stop(session)}

    async def room_publishers(self, appid: int, roomid: str) -> dict[str, Any]:
        """The uids publishing in the room, in join order (the room page's events)."""
        return {"uids": [p.uid for p in self.hub.publishers(appid, roomid)]}
    async def ingest_stream(self, appid: int, roomid: str, uid: str, transport: str, fmt: str,
                            chunks: AsyncIterator[bytes]) -> dict[str, Any]:
        """An RTMP/SRT publisher's byte stream (``fmt`` ``flv`` or ``mpegts``), published in
        the room until it ends; ``{"reason"}`` it ended for."""
        return {"reason": await self.push.run(appid, roomid, uid, transport, fmt, chunks)}

    # -- recordings -----------------------------------------------------------------------------

    async def start(self, appid: int, req: StartRecordRequest,
                    remote_rooms: list[str]) -> dict[str, Any]:
        task = await self.service.start(appid, req, remote_rooms=frozenset(remote_rooms))
        return {"recordid": task.recordid}

    async def stop(self, appid: int, req: StopRecordRequest) -> dict[str, Any]:
        recordid = await self.service.stop(appid, req)
        return {"recordid": recordid, "files": self.service.files(recordid)}

    async def pause(self, appid: int, req: StopRecordRequest) -> dict[str, Any]:
        return await self.service.pause(appid, req)

    async def resume(self, appid: int, req: StopRecordRequest) -> dict[str, Any]:
        return await self.service.resume(appid, req)

    async def update(self, appid: int, req: UpdateMixRecordRequest) -> dict[str, Any]:
        return {"recordid": await self.service.update(appid, req)}

    async def query(self, appid: int, roomid: str, recordid: str) -> dict[str, Any]:
        return {"data": self.service.query(appid, roomid, recordid)}

    async def adopt(self, recordids: list[str]) -> dict[str, Any]:
        """Resume tasks whose worker died (another node's, after SIGKILL) here."""
        return {"adopted": await self.service.adopt(recordids)}

    async def publications(self) -> dict[str, Any]:
        """The WebRTC publications received here, with what each sends."""
        return {"publications": self.hub.publications()}

    # -- pulled sources (ingresses) -------------------------------------------------------------

    async def ingress_start(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Run an ingress the front claimed for this worker."""
        return {"started": self.ingress.start(spec)}

    async def ingress_stop(self, ingressid: str) -> dict[str, Any]:
        """Stop a deleted ingress here: its publishers leave the room."""
        return {"found": await self.ingress.stop(ingressid)}

    # -- load -----------------------------------------------------------------------------------

    def rooms(self) -> list[str]:
        """Rooms held here: with a WebRTC publisher here, or the room of a running recording.
        Rooms seen here only through a relay belong to another worker."""
        held = {f"{appid}/{roomid}" for appid, roomid in self.hub.local_rooms()}
        held.update(f"{r.task.appid}/{r.task.roomid}" for r in self.service.recordings.values())
        held.update(f"{appid}/{roomid}" for appid, roomid in self.viewers.rooms())
        held.update(f"{r.spec['appid']}/{r.spec['roomid']}" for r in self.ingress.runners.values())
        return sorted(held)

    def carried(self) -> list[tuple[str, float]]:
        """(kind, units) of every running recording and received publication."""
        units = [recording_kind(r.task.request) for r in list(self.service.recordings.values())]
        return [*units, ("publisher", float(self.hub.publisher_count()))]

    async def status(self) -> dict[str, Any]:
        cpu = self.cpu.sample()
        carried = self.carried()
        self.costs.observe(cpu, carried)
        return {
            "id": self.id,
            "pid": os.getpid(),
            "cpu": round(cpu, 4),
            "committed": round(self.costs.committed(carried), 4),
            "costs": self.costs.costs(),
            "recordings": len(self.service.recordings),
            "publishers": self.hub.publisher_count(),
            "rooms": self.rooms(),
            "relay": self.relay_address,
            "relays": self.relays.stats.as_dict(),
            "push": sorted(push_protocols()),  # the schemes outputs.pushurl may use
            "metrics": worker_snapshot(self.hub, self.service),  # the front's /metrics of it
        }


def webrtc_options(settings: Settings) -> dict[str, Any]:
    """The WebRTC ingest's ICE settings from the configuration."""
    options: dict[str, Any] = {}
    announced = [a.strip() for a in settings.ice_announced_addresses.split(",") if a.strip()]
    if announced:
        options["announced_addresses"] = announced
    if settings.ice_port_min and settings.ice_port_max:
        options["port_range"] = (settings.ice_port_min, settings.ice_port_max)
    return options
