"""Auto-record rules, applied by the worker that owns a room.

The worker's :class:`~cloudrec.rooms.RoomHub` reports every publication received here entering
and leaving its room (``RoomHub.on_presence``). When a publisher of any kind (WebRTC, RTMP, SRT,
a pulled ingress) appears in a room that a rule of its app matches (``*`` matches any
characters), the rule's recording starts with no API call:

- ``streamtype`` 2: a source recording of that uid with the rule's ``recordtype``,
  ``storagecfg`` and ``callbackurl``, stopped when the uid leaves (a reconnect that replaces
  its publication keeps the recording, which goes on after a discontinuity);
- ``streamtype`` 1: a mixed recording of the room with the rule's ``mixconfig`` template,
  started by the first publisher and stopped when the last one leaves.

Each gets a fresh resid from the task store and is an ordinary task (``listrecord``,
``queryrecord``, callbacks). Rules are read from the shared store at each event, so a rule added
on any node applies at once everywhere.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from cloudrec.errors import CloudrecError
from cloudrec.ingress.store import IngressStore, Rule
from cloudrec.models import StartRecordRequest, StopRecordRequest, parse_request
from cloudrec.models.ingress import room_matches
from cloudrec.rooms import RoomHub
from cloudrec.rooms.publication import Publication

log = logging.getLogger(__name__)

# (ruleid, appid, roomid, uid or None for a mix) -> (recordid, resid)
Key = tuple[str, int, str, str | None]


class AutoRecorder:
    def __init__(self, hub: RoomHub, service: Any, tasks: Any, store: IngressStore) -> None:
        self.hub = hub
        self.service = service  # the worker's RecordingService
        self.tasks = tasks
        self.store = store
        self.running: dict[Key, tuple[str, str]] = {}
        self._pending: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()  # one presence change at a time, in order
        hub.on_presence = self.on_presence

    def on_presence(self, event: str, pub: Publication, replaced: bool) -> None:
        if replaced or self.hub.closed:
            return
        appid, roomid = pub.key
        work = (self._joined(appid, roomid, pub.uid) if event == "published"
                else self._left(appid, roomid, pub.uid))
        task = asyncio.get_running_loop().create_task(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _rules(self, appid: int, roomid: str) -> list[Rule]:
        try:
            return [r for r in self.store.rules(appid) if room_matches(r.pattern, roomid)]
        except Exception:
            log.exception("auto-record rules could not be read")
            return []

    async def _joined(self, appid: int, roomid: str, uid: str) -> None:
        async with self._lock:
            for rule in self._rules(appid, roomid):
                key: Key = (rule.ruleid, appid, roomid, uid if rule.streamtype == 2 else None)
                if self._active(key) or self._adopt(rule, key):
                    continue
                await self._start(rule, key)

    async def _left(self, appid: int, roomid: str, uid: str) -> None:
        async with self._lock:
            publishing = self.hub.is_publishing(appid, roomid, relayed=False)
            for key in [k for k in self.running if k[1] == appid and k[2] == roomid]:
                if key[3] == uid or (key[3] is None and not publishing):
                    await self._stop(key, "its publisher left" if key[3] else "the room emptied")

    def _active(self, key: Key) -> bool:
        held = self.running.get(key)
        if held is None:
            return False
        task = self.tasks.get(held[0])
        if task is not None and task.active:
            return True
        del self.running[key]
        return False

    def _adopt(self, rule: Rule, key: Key) -> bool:
        """A task of this rule still running from before a restart (resumed by the recording
        service): its uid, type and settings match. Taken back instead of starting another."""
        _, appid, roomid, uid = key
        taken = {recordid for recordid, _ in self.running.values()}
        try:
            wanted = self._request(rule, key, "-").model_dump(mode="json")
        except CloudrecError:
            return False
        fields = ("streamtype", "recordtype", "storagecfg", "callbackurl", "mixconfig", "uid")
        for task in self.tasks.active_tasks_in_room(appid, roomid):
            if task.recordid in taken:
                continue
            if all(task.request.get(f) == wanted.get(f) for f in fields):
                self.running[key] = (task.recordid, task.resid)
                return True
        return False

    @staticmethod
    def _request(rule: Rule, key: Key, resid: str) -> StartRecordRequest:
        _, appid, roomid, uid = key
        body: dict[str, Any] = {
            "resid": resid, "appid": appid, "roomid": roomid,
            "recordtype": rule.request["recordtype"], "streamtype": rule.streamtype,
            "storagecfg": rule.request["storagecfg"]}
        if uid is not None:
            body["uid"] = uid
        if rule.request.get("mixconfig") is not None:
            body["mixconfig"] = rule.request["mixconfig"]
        if rule.request.get("callbackurl"):
            body["callbackurl"] = rule.request["callbackurl"]
        return parse_request(StartRecordRequest, body, appid)

    async def _start(self, rule: Rule, key: Key) -> None:
        _, appid, roomid, uid = key
        try:
            req = self._request(rule, key, self.tasks.apply(appid))
            task = await self.service.start(appid, req)
        except CloudrecError as exc:
            log.warning("auto-record rule %s could not record %s/%s%s: %s", rule.ruleid, appid,
                        roomid, f" uid={uid}" if uid else "", exc.message)
            return
        except Exception:
            log.exception("auto-record rule %s failed on %s/%s", rule.ruleid, appid, roomid)
            return
        self.running[key] = (task.recordid, task.resid)
        log.info("auto-record rule %s: recording %s of %s/%s%s", rule.ruleid, task.recordid,
                 appid, roomid, f" uid={uid}" if uid else " (mix)")

    async def _stop(self, key: Key, why: str) -> None:
        recordid, resid = self.running.pop(key)
        _, appid, roomid, _ = key
        req = StopRecordRequest(appid=appid, resid=resid, roomid=roomid, recordid=recordid)
        try:
            await self.service.stop(appid, req)
            log.info("auto-record: recording %s stopped (%s)", recordid, why)
        except CloudrecError as exc:  # stopped already (idle, a stoprecord): nothing to do
            log.info("auto-record: recording %s not stopped: %s", recordid, exc.message)
        except Exception:
            log.exception("auto-record: stopping %s failed", recordid)

    async def close(self) -> None:
        self.hub.on_presence = None
        for task in list(self._pending):
            task.cancel()
