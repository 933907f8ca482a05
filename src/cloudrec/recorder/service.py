"""The service layer the API calls: resids, starting, stopping and querying recordings.

It owns the running recordings of this process, and at start-up resumes what a crash or a
restart left behind: active tasks continue into their playlist (the next segment carries
``#EXT-X-DISCONTINUITY``) and stop by themselves after ``idle_timeout_s`` if their publisher
does not come back; files still in the spool of stopped tasks are stored.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from cloudrec.callbacks import CallbackOutbox
from cloudrec.config import Settings
from cloudrec.errors import RecordingError, StorageError
from cloudrec.recorder.source import SourceRecording, prefix_for
from cloudrec.rooms import RoomHub
from cloudrec.storage import Spool, SpoolUploader, close_clients, open_store
from cloudrec.tasks import Status, StopReason, Task, TaskStore

log = logging.getLogger(__name__)

RECORD_KINDS = {0: frozenset({"audio", "video"}), 1: frozenset({"video"}), 2: frozenset({"audio"})}


class RecordingService:
    def __init__(
        self, settings: Settings, tasks: TaskStore, hub: RoomHub, outbox: CallbackOutbox | None = None
    ) -> None:
        self.settings = settings
        self.outbox = outbox
        self.tasks = tasks
        self.hub = hub
        self.spool = Spool(settings.data_dir / "spool")
        self.recordings: dict[str, SourceRecording] = {}
        self._leftovers: list[SpoolUploader] = []

    # -- the API's verbs ------------------------------------------------------------------------

    def apply(self, appid: int) -> str:
        return self.tasks.apply(appid)

    async def start(self, appid: int, req: Any) -> Task:
        """startrecord: resid → room publishing → parameters served → storage reachable."""
        self.tasks.check_resid(appid, req.resid)
        if not self.hub.is_publishing(appid, req.roomid):
            raise RecordingError(f"room {req.roomid!r} is not publishing", 4005)
        if req.streamtype == 1:
            raise RecordingError(
                "mixed-stream recording (streamtype 1) is not supported by this server yet", 4004
            )
        publisher = next((p for p in self.hub.publishers(appid, req.roomid) if p.uid == req.uid), None)
        if publisher is None:
            raise RecordingError(f"uid {req.uid!r} is not publishing in room {req.roomid!r}", 4005)
        kinds = RECORD_KINDS[req.recordtype] & publisher.kinds
        if not kinds:
            wanted = "/".join(sorted(RECORD_KINDS[req.recordtype]))
            raise RecordingError(f"uid {req.uid!r} publishes no {wanted} for recordtype {req.recordtype}", 4004)
        storagecfg = req.storagecfg.model_dump()
        try:
            store = open_store(storagecfg, self.settings.data_dir)
            await store.probe()
        except StorageError as exc:
            if exc.message.startswith("storagecfg"):
                raise
            raise StorageError(f"storagecfg: {exc.message}") from exc
        request = req.model_dump(mode="json")
        task = self.tasks.create_task(
            appid=appid,
            resid=req.resid,
            roomid=req.roomid,
            uid=req.uid,
            streamtype=req.streamtype,
            recordtype=req.recordtype,
            request=request,
        )
        self.tasks.set_progress(task.recordid, {"kinds": sorted(kinds)})
        self._launch(task, kinds, resume=False)
        return task

    async def stop(self, appid: int, req: Any) -> str:
        task = self._active_task(appid, req.roomid, req.recordid, req.resid)
        recording = self.recordings.get(task.recordid)
        if recording is None:  # active in the store but not running here: end it cleanly
            self.tasks.set_status(task.recordid, Status.STOPPED, stopreason=str(StopReason.API))
            self._emit(task, "recording.stopped", {"reason": str(StopReason.API)})
            return task.recordid
        await recording.stop(StopReason.API, timeout=self.settings.stop_timeout_s)
        return task.recordid

    async def update(self, appid: int, req: Any) -> str:
        task = self._active_task(appid, req.roomid, req.recordid, req.resid)
        if task.streamtype != 1:
            raise RecordingError("recording task type is not mixed stream recording", 4019)
        raise RecordingError("mixed-stream recording is not supported by this server yet", 4004)

    def query(self, appid: int, roomid: str, recordid: str) -> dict[str, Any]:
        task = self.tasks.get(recordid)
        if task is None or task.appid != appid or task.roomid != roomid:
            raise RecordingError(f"recordid {recordid!r} does not exist", 4013)
        data = self.describe(task)
        if not task.active:
            error = RecordingError(
                f"recordid {recordid!r} does not exist: the task has stopped "
                f"(reason: {task.stopreason or 'unknown'})",
                4013,
            )
            error.data = data  # type: ignore[attr-defined]
            raise error
        return data

    def describe(self, task: Task) -> dict[str, Any]:
        recording = self.recordings.get(task.recordid)
        progress = recording.progress() if recording else task.progress
        return {
            "recordid": task.recordid,
            "appid": task.appid,
            "roomid": task.roomid,
            "status": int(task.status),
            "createtime": task.createtime,
            "starttime": task.starttime,
            # beyond the seed
            "uid": task.uid,
            "streamtype": task.streamtype,
            "recordtype": task.recordtype,
            "stoptime": task.stoptime,
            "stopreason": task.stopreason,
            "error": task.error,
            **progress,
        }

    def _active_task(self, appid: int, roomid: str, recordid: str, resid: str) -> Task:
        task = self.tasks.get(recordid)
        if task is None or task.appid != appid or task.roomid != roomid or not task.active:
            raise RecordingError(f"recordid {recordid!r} does not exist", 4013)
        if task.resid != resid:
            raise RecordingError(f"resid does not belong to recordid {recordid!r}", 4012)
        return task

    # -- running recordings ---------------------------------------------------------------------

    def _launch(self, task: Task, kinds: frozenset[str], *, resume: bool) -> None:
        store = open_store(task.request["storagecfg"], self.settings.data_dir)
        recording = SourceRecording(
            task,
            hub=self.hub,
            tasks=self.tasks,
            store=store,
            spool_dir=self.spool.task_dir(task.recordid),
            kinds=kinds,
            idle_timeout_s=self.settings.idle_timeout_s,
            segment_seconds=self.settings.segment_seconds,
            stop_timeout_s=self.settings.stop_timeout_s,
            on_finished=self._finished,
            emit=lambda event_type, data: self._emit(task, event_type, data),
            resumed=resume,
        )
        self.recordings[task.recordid] = recording
        recording.start(resume=resume)

    def _emit(self, task: Task, event_type: str, data: dict[str, Any]) -> None:
        if self.outbox is not None:
            self.outbox.emit(task.request.get("callbackurl"), event_type, appid=task.appid,
                             roomid=task.roomid, recordid=task.recordid, uid=task.uid, data=data)

    def _finished(self, recordid: str) -> None:
        recording = self.recordings.pop(recordid, None)
        if recording is not None and recording.uploader.pending == 0:
            self.spool.remove(recordid)
        elif recording is not None:
            self._leftovers.append(recording.uploader)
            asyncio.get_running_loop().create_task(self._store_leftovers(recordid, recording.uploader))

    async def _store_leftovers(self, recordid: str, uploader: SpoolUploader) -> None:
        await uploader.drain()
        self._leftovers.remove(uploader)
        self.spool.remove(recordid)

    async def recover(self) -> None:
        """After a restart: resume active tasks, store what stopped tasks left in the spool."""
        active = {t.recordid: t for t in self.tasks.active_tasks()}
        for task in active.values():
            if task.streamtype != 2:
                self.tasks.set_status(task.recordid, Status.FAILED, stopreason="error",
                                      error="mixed recording cannot be resumed")
                continue
            kinds = frozenset(task.progress.get("kinds") or RECORD_KINDS[task.recordtype])
            log.info("resuming recording %s after a restart", task.recordid)
            self._launch(task, kinds, resume=True)
        for recordid in self.spool.existing():
            if recordid in active:
                continue
            task = self.tasks.get(recordid)
            if task is None:
                continue
            store = open_store(task.request["storagecfg"], self.settings.data_dir)
            uploader = SpoolUploader(store, prefix_for(task.request["storagecfg"]),
                                     self.spool.task_dir(recordid))
            # the recorder's playlists, not the ".name.tmp" / ".upload-name" files beside them
            playlists = sorted(p for p in uploader.spool_dir.glob("*.m3u8")
                               if not p.name.startswith("."))
            if uploader.submit_pending(None) or playlists:
                for playlist in playlists:
                    uploader.submit_playlist(playlist)
                log.info("storing the files recording %s left in the spool", recordid)
                self._leftovers.append(uploader)
                asyncio.get_running_loop().create_task(self._store_leftovers(recordid, uploader))
            else:
                self.spool.remove(recordid)

    async def shutdown(self) -> None:
        """Finalise every open recording (reason shutdown) and wait for its files, bounded."""
        recordings = list(self.recordings.values())
        await asyncio.gather(
            *(r.stop(StopReason.SHUTDOWN, timeout=self.settings.stop_timeout_s) for r in recordings),
            return_exceptions=True,
        )
        for uploader in list(self._leftovers):
            await uploader.drain(timeout=1.0)
            await uploader.close()
        await close_clients()
