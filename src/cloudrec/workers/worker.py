"""One worker: the rooms it owns (a :class:`RoomHub`) and the recordings that read them.

The front calls these methods, in process or over :mod:`cloudrec.workers.channel`. The worker
writes task state and callback events to the node's shared stores itself; it never talks to
the cluster directory: the front publishes its status (:meth:`Worker.status`) for it.
"""

from __future__ import annotations

import logging
from typing import Any

from cloudrec.callbacks import CallbackOutbox
from cloudrec.config import Settings
from cloudrec.models import StartRecordRequest, StopRecordRequest, UpdateMixRecordRequest, parse_request
from cloudrec.recorder import RecordingService
from cloudrec.rooms import RoomHub
from cloudrec.tasks import TaskStore
from cloudrec.workers.load import CpuMeter

log = logging.getLogger(__name__)


def worker_id(node: str, index: int) -> str:
    return f"{node}/w{index}"


class Worker:
    def __init__(self, settings: Settings, index: int, node: str, tasks: TaskStore,
                 outbox: CallbackOutbox | None, hub: RoomHub | None = None, *,
                 front_url: str = "", secret: str = "") -> None:
        self.settings = settings
        self.index = index
        self.id = worker_id(node, index)
        self.hub = hub or RoomHub(**hub_options(settings))
        self.tasks = tasks
        self.service = RecordingService(settings, tasks, self.hub, outbox, worker_id=self.id,
                                        claim_unowned=index == 0)
        self.cpu = CpuMeter()
        self.relay_address = ""
        self.front_url = front_url  # where to ask who owns a room (relayed mix inputs)
        self.secret = secret

    async def open(self) -> None:
        await self.service.recover()

    async def close(self) -> None:
        await self.service.shutdown()
        await self.hub.close()

    # -- rooms ----------------------------------------------------------------------------------

    async def publish(self, appid: int, roomid: str, uid: str, sdp: str) -> dict[str, Any]:
        answer, session = await self.hub.publish(appid, roomid, uid, sdp)
        return {"answer": answer, "session": session}

    async def unpublish(self, session: str) -> dict[str, Any]:
        return {"found": await self.hub.unpublish(session)}

    # -- recordings -----------------------------------------------------------------------------

    async def start(self, appid: int, body: str, remote_rooms: list[str]) -> dict[str, Any]:
        req = parse_request(StartRecordRequest, body, appid)
        task = await self.service.start(appid, req, remote_rooms=frozenset(remote_rooms))
        return {"recordid": task.recordid}

    async def stop(self, appid: int, body: str) -> dict[str, Any]:
        req = parse_request(StopRecordRequest, body, appid)
        return {"recordid": await self.service.stop(appid, req)}

    async def update(self, appid: int, body: str) -> dict[str, Any]:
        req = parse_request(UpdateMixRecordRequest, body, appid)
        return {"recordid": await self.service.update(appid, req)}

    async def query(self, appid: int, roomid: str, recordid: str) -> dict[str, Any]:
        return {"data": self.service.query(appid, roomid, recordid)}

    async def adopt(self, recordids: list[str]) -> dict[str, Any]:
        """Resume tasks whose worker died (another node's, after SIGKILL) here."""
        return {"adopted": await self.service.adopt(recordids)}

    # -- load -----------------------------------------------------------------------------------

    def rooms(self) -> list[str]:
        """Rooms held here: with a WebRTC publisher here, or the room of a running recording.
        Rooms seen here only through a relay belong to another worker."""
        held = {f"{appid}/{roomid}" for appid, roomid in self.hub.local_rooms()}
        held.update(f"{r.task.appid}/{r.task.roomid}" for r in self.service.recordings.values())
        return sorted(held)

    async def status(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "pid": _pid(),
            "cpu": round(self.cpu.sample(), 4),
            "recordings": len(self.service.recordings),
            "publishers": self.hub.publisher_count(),
            "rooms": self.rooms(),
            "relay": self.relay_address,
        }


def hub_options(settings: Settings) -> dict[str, Any]:
    """The RoomHub's ICE settings from the configuration."""
    options: dict[str, Any] = {}
    announced = [a.strip() for a in settings.ice_announced_addresses.split(",") if a.strip()]
    if announced:
        options["announced_addresses"] = announced
    if settings.ice_port_min and settings.ice_port_max:
        options["port_range"] = (settings.ice_port_min, settings.ice_port_max)
    return options


def _pid() -> int:
    import os

    return os.getpid()
