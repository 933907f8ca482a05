"""The service layer the API calls: resids, starting, stopping and querying recordings.

It owns the running recordings of this process (source: :class:`SourceRecording`, mixed:
:class:`MixedRecording`), and at start-up resumes what a crash or a restart left behind: active
tasks continue into their playlist (the next segment carries ``#EXT-X-DISCONTINUITY``; a mixed
task with the layout of its latest ``updatemixrecord``) and stop by themselves after
``idle_timeout_s`` if their publishers do not come back; files still in the spool of stopped
tasks are stored.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from cloudrec.callbacks import CallbackOutbox
from cloudrec.config import Settings
from cloudrec.errors import RecordingError, StorageError
from cloudrec.media.hls import atomic_write_text, parse_playlist
from cloudrec.media.push.fanout import push_protocols
from cloudrec.media.segmenter import reserve_sequence
from cloudrec.models.mixconfig import MixConfig
from cloudrec.models.rules import (
    RECORD_KINDS,
    check_push_urls,
    mixed_kinds,
    not_publishing,
    start_rooms,
)
from cloudrec.recorder.base import basename_for
from cloudrec.recorder.mixed import MixedRecording
from cloudrec.recorder.outputs import submit_leftovers
from cloudrec.recorder.source import SourceRecording, prefix_for
from cloudrec.recorder.webpage.recording import WebpageRecording, check_page_url
from cloudrec.rooms import RoomHub
from cloudrec.storage import ObjectStore, Spool, SpoolUploader, close_clients, open_store
from cloudrec.tasks import StopReason, Task, TaskService, TaskStore
from cloudrec.tasks.service import mix_not_running

log = logging.getLogger(__name__)


class RecordingService:
    def __init__(
        self, settings: Settings, tasks: TaskStore, hub: RoomHub,
        outbox: CallbackOutbox | None = None, *, worker_id: str = "", claim_unowned: bool = True,
    ) -> None:
        self.settings = settings
        self.worker_id = worker_id  # the owner written on the tasks this service runs
        self.claim_unowned = claim_unowned  # resume tasks with no owner (made before owners)
        self.outbox = outbox
        self.tasks = tasks
        self.stored = TaskService(tasks, outbox)  # answers for tasks that do not run here
        self.hub = hub
        self.spool = Spool(settings.data_dir / spool_name(worker_id))
        self.recordings: dict[str, SourceRecording | MixedRecording] = {}
        self._leftovers: list[SpoolUploader] = []

    # -- the API's verbs ------------------------------------------------------------------------

    async def start(self, appid: int, req: Any, remote_rooms: frozenset[str] = frozenset()) -> Task:
        """startrecord: resid → room publishing → parameters served → storage reachable.

        ``remote_rooms``: rooms of a mix that publish on other workers (relayed here)."""
        check_push_urls(req.outputs, push_protocols())  # 2101 comes before the resid's codes
        webpage = req.mixconfig.webpage if req.streamtype == 1 else None
        if webpage is not None:
            await check_page_url(webpage.url, allow_private=self.settings.allow_private_urls)
        self.tasks.check_resid(appid, req.resid)
        if webpage is not None:
            kinds = self._webpage_start_checks(req)
        elif req.streamtype == 1:
            kinds = self._mixed_start_checks(appid, req, remote_rooms)
        else:
            kinds = self._source_start_checks(appid, req)
        storagecfg = req.storagecfg.model_dump()
        try:
            store = open_store(storagecfg, self.settings.local_storage_dir)
            await store.probe(allow_private=self.settings.allow_private_storage)
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
            owner=self.worker_id or None,
        )
        progress: dict[str, Any] = {"kinds": sorted(kinds)}
        if req.mixconfig is not None:
            progress["mixconfig"] = _dump_mixconfig(req.mixconfig)
        self.tasks.set_progress(task.recordid, progress)
        self._launch(task, kinds, store, resume=False)
        return task

    def _source_start_checks(self, appid: int, req: Any) -> frozenset[str]:
        if not self.hub.is_publishing(appid, req.roomid):
            raise not_publishing([req.roomid])
        publishers = self.hub.publishers(appid, req.roomid)
        publisher = next((p for p in publishers if p.uid == req.uid), None)
        if publisher is None:
            raise RecordingError(f"uid {req.uid!r} is not publishing in room {req.roomid!r}", 4005)
        kinds = RECORD_KINDS[req.recordtype] & publisher.kinds
        if not kinds:
            wanted = "/".join(sorted(RECORD_KINDS[req.recordtype]))
            raise RecordingError(
                f"uid {req.uid!r} publishes no {wanted} for recordtype {req.recordtype}", 4004)
        return kinds

    def _webpage_start_checks(self, req: Any) -> frozenset[str]:
        """A web page needs no publisher; its tracks are those of any mix."""
        return _mixed_tracks(req)

    def _mixed_start_checks(
        self, appid: int, req: Any, remote_rooms: frozenset[str],
    ) -> frozenset[str]:
        """A template needs the task's room publishing; an input list, any room it names."""
        rooms = start_rooms(req)
        if not any(self.hub.is_publishing(appid, room) or room in remote_rooms for room in rooms):
            raise not_publishing(rooms)
        return _mixed_tracks(req)

    async def stop(self, appid: int, req: Any) -> str:
        task = self.stored.active_task(appid, req.roomid, req.recordid, req.resid)
        recording = self.recordings.get(task.recordid)
        if recording is None:  # active in the store but not running here: end it cleanly
            return self.stored.end(task)
        await recording.stop(StopReason.API, timeout=self.settings.stop_timeout_s)
        return task.recordid

    async def pause(self, appid: int, req: Any) -> dict[str, Any]:
        """pauserecord (stoprecord's body and codes; 4004 when already paused)."""
        return self._pause_or_resume(appid, req, resume=False)

    async def resume(self, appid: int, req: Any) -> dict[str, Any]:
        """resumerecord (stoprecord's body and codes; 4004 when not paused)."""
        return self._pause_or_resume(appid, req, resume=True)

    def _pause_or_resume(self, appid: int, req: Any, *, resume: bool) -> dict[str, Any]:
        """A task that is active in the store but not running here (its worker is gone and
        no publisher came back yet) has the state written into its progress: it resumes
        paused, or not, wherever it runs next."""
        task = self.stored.active_task(appid, req.roomid, req.recordid, req.resid)
        recording = self.recordings.get(task.recordid)
        if recording is None:
            return self.stored.pause_stored(task, resume=resume)
        state = recording.resume() if resume else recording.pause()
        return {"recordid": task.recordid, **state}

    async def update(self, appid: int, req: Any) -> str:
        task = self.stored.mixed_task(appid, req)
        recording = self.recordings.get(task.recordid)
        if not isinstance(recording, MixedRecording):
            raise mix_not_running()
        if req.mixconfig.webpage is not None and not isinstance(recording, WebpageRecording):
            raise RecordingError("mixconfig.webpage: this mixed recording records streams; "
                                 "what it records is fixed at startrecord", 4016)
        kinds = mixed_kinds(task.recordtype, req.mixconfig)
        if kinds != recording.kinds:
            raise RecordingError(
                f"mixconfig.output.streamtype {req.mixconfig.output.streamtype} would change the "
                f"recording's tracks ({'+'.join(sorted(recording.kinds))}); they are fixed at "
                "startrecord", 4016)
        await recording.update(req.mixconfig)
        return task.recordid

    def query(self, appid: int, roomid: str, recordid: str) -> dict[str, Any]:
        return self.stored.query(appid, roomid, recordid, self._live_progress)

    def describe(self, task: Task) -> dict[str, Any]:
        return self.stored.describe(task, self._live_progress(task))

    def _live_progress(self, task: Task) -> dict[str, Any] | None:
        recording = self.recordings.get(task.recordid)
        return recording.progress() if recording else None

    def files(self, recordid: str) -> list[dict[str, Any]]:
        """A task's files: the running recording's list, else the one saved as it ended."""
        recording = self.recordings.get(recordid)
        if recording is not None:
            return recording.outputs.files()
        return self.stored.files(recordid)

    # -- running recordings ---------------------------------------------------------------------

    def _launch(self, task: Task, kinds: frozenset[str], store: ObjectStore, *,
                resume: bool) -> None:
        common: dict[str, Any] = {
            "hub": self.hub,
            "tasks": self.tasks,
            "store": store,
            "spool_dir": self.spool.task_dir(task.recordid),
            "kinds": kinds,
            "idle_timeout_s": self.settings.idle_timeout_s,
            "segment_seconds": self.settings.segment_seconds,
            "stop_timeout_s": self.settings.stop_timeout_s,
            "pause_timeout_s": self.settings.pause_timeout_s,
            "on_finished": self._finished,
            "emit": lambda event_type, data: self.stored.emit(task, event_type, data),
            "resumed": resume,
        }
        recording: SourceRecording | MixedRecording
        mixconfig = task_mixconfig(task) if task.streamtype == 1 else None
        if mixconfig is not None and mixconfig.webpage is not None:
            recording = WebpageRecording(
                task, mixconfig=mixconfig, single_process=self.settings.webpage_single_process,
                allow_private_urls=self.settings.allow_private_urls, **common)
        elif task.streamtype == 1:
            recording = MixedRecording(
                task, mixconfig=task_mixconfig(task),
                allow_private_urls=self.settings.allow_private_urls, **common)
        else:
            recording = SourceRecording(task, **common)
        self.recordings[task.recordid] = recording
        recording.start(resume=resume)

    def _finished(self, recordid: str) -> None:
        recording = self.recordings.pop(recordid, None)
        if recording is not None and recording.uploader.pending == 0:
            self.spool.remove(recordid)
        elif recording is not None:
            self._leftovers.append(recording.uploader)
            asyncio.get_running_loop().create_task(
                self._store_leftovers(recordid, recording.uploader))

    def leftover_segments(self) -> int:
        """Segments of recordings that ended, still waiting in the spool for the store."""
        return sum(u.pending_segments for u in list(self._leftovers))

    async def _store_leftovers(self, recordid: str, uploader: SpoolUploader) -> None:
        await uploader.drain()
        self._leftovers.remove(uploader)
        self.spool.remove(recordid)

    async def recover(self) -> None:
        """After a restart: resume this worker's active tasks, store what stopped tasks left
        in the spool. A task another worker took over meanwhile (its room came back there)
        is not resumed here: only its segments still in this spool are stored, not the
        playlist, which its new owner keeps writing."""
        active = {t.recordid: t for t in self.tasks.active_tasks()}
        mine = [t for t in active.values() if self._owns(t)]
        for task in mine:
            if task.owner is None and self.worker_id:
                if not self.tasks.claim_task(task.recordid, self.worker_id, None):
                    continue
            log.info("resuming recording %s after a restart", task.recordid)
            await self._resume(task)
        for recordid in self.spool.existing():
            if recordid in self.recordings:
                continue
            spooled = self.tasks.get(recordid)
            if spooled is None:
                continue
            if spooled.active and recordid in active and not self._owns(spooled):
                self._store_segments_of(spooled)
                continue
            store = open_store(spooled.request["storagecfg"], self.settings.local_storage_dir)
            uploader = SpoolUploader(store, prefix_for(spooled.request["storagecfg"]),
                                     self.spool.task_dir(recordid))
            # the recorder's playlists, not the ".name.tmp" / ".upload-name" files beside them
            playlists = sorted(p for p in uploader.spool_dir.glob("*.m3u8")
                               if not p.name.startswith("."))
            if uploader.submit_pending(None) + submit_leftovers(uploader) or playlists:
                for playlist in playlists:
                    uploader.submit_playlist(playlist)
                log.info("storing the files recording %s left in the spool", recordid)
                self._leftovers.append(uploader)
                asyncio.get_running_loop().create_task(self._store_leftovers(recordid, uploader))
            else:
                self.spool.remove(recordid)

    def _owns(self, task: Task) -> bool:
        owner = getattr(task, "owner", None)
        if not self.worker_id:
            return True
        return owner == self.worker_id or (owner is None and self.claim_unowned)

    async def _resume(self, task: Task) -> bool:
        kinds = frozenset(task.progress.get("kinds") or RECORD_KINDS[task.recordtype])
        try:
            store = open_store(task.request["storagecfg"], self.settings.local_storage_dir)
            await self._fetch_playlist(task, store)
            self._launch(task, kinds, store, resume=True)
            return True
        except Exception as exc:  # e.g. a stored mixconfig this version cannot read
            log.exception("recording %s cannot be resumed", task.recordid)
            self.stored.fail(task, f"cannot be resumed after a restart: {exc}",
                             reported=str(exc))
            return False

    async def adopt(self, recordids: list[str]) -> list[str]:
        """Take over active tasks whose worker is gone (its node died): claim each one
        atomically, then resume it into the same playlist, as after a restart."""
        adopted: list[str] = []
        for recordid in recordids:
            task = self.tasks.get(recordid)
            if task is None or not task.active or recordid in self.recordings:
                continue
            if not self.tasks.claim_task(recordid, self.worker_id, task.owner):
                continue
            log.info("recording %s: taking it over from %s", recordid, task.owner)
            task = self.tasks.get(recordid)
            assert task is not None
            if await self._resume(task):
                adopted.append(recordid)
        return adopted

    async def _fetch_playlist(self, task: Task, store: ObjectStore) -> None:
        """A task resumed on another node than the one that began it has no playlist in this
        spool: fetch the stored one, so the recording goes on in the same playlist and every
        segment stored before keeps its place in it. Its numbering goes on past what the task
        store knows too (the stored playlist may lag behind the files the dead node closed,
        and a node's own disk cannot be read at all): a name is never used twice."""
        spool_dir = self.spool.task_dir(task.recordid)
        name = basename_for(task) + ".m3u8"
        if (spool_dir / name).exists():
            return
        progress = task.progress
        counted = int(progress.get("segments") or 0)
        known = int(progress.get("nextsegment") or (counted + 1 if counted else 0))
        if known:
            reserve_sequence(spool_dir, basename_for(task), known)
        data = await store.get_bytes(prefix_for(task.request["storagecfg"]) + name)
        if data is not None:
            spool_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(spool_dir / name, data.decode())

    def _store_segments_of(self, task: Task) -> None:
        """Store the segments a task left in this spool when it went on elsewhere, then hand
        the ones this spool's playlist lists to the task's owner, which lists them in its
        playlist in their place (segment numbers are never reused: they cannot clash)."""
        store = open_store(task.request["storagecfg"], self.settings.local_storage_dir)
        uploader = SpoolUploader(store, prefix_for(task.request["storagecfg"]),
                                 self.spool.task_dir(task.recordid))
        playlist = uploader.spool_dir / (basename_for(task) + ".m3u8")
        listed = parse_playlist(playlist.read_text(), uploader.spool_dir) \
            if playlist.exists() else []
        entries = [{"name": s.name, "index": s.index, "duration": s.duration,
                    "discontinuity": s.discontinuity, "size": s.size, "date": s.date}
                   for s in listed if s.path.exists()]
        if uploader.submit_pending(None):
            log.info("storing the segments recording %s left in this spool", task.recordid)
            self._leftovers.append(uploader)
            asyncio.get_running_loop().create_task(
                self._return_segments(task.recordid, uploader, entries))

    async def _return_segments(self, recordid: str, uploader: SpoolUploader,
                               entries: list[dict[str, Any]]) -> None:
        await uploader.drain()
        if entries:
            try:
                self.tasks.return_segments(recordid, entries)
                log.info("recording %s: %d stored segment(s) handed to its owner to list",
                         recordid, len(entries))
            except Exception:
                log.exception("recording %s: returned segments not handed over", recordid)
        self._leftovers.remove(uploader)
        self.spool.remove(recordid)

    async def shutdown(self) -> None:
        """Finalise every open recording (reason shutdown) and wait for its files, bounded."""
        recordings = list(self.recordings.values())
        await asyncio.gather(
            *(r.stop(StopReason.SHUTDOWN, timeout=self.settings.stop_timeout_s)
              for r in recordings),
            return_exceptions=True,
        )
        for uploader in list(self._leftovers):
            await uploader.drain(timeout=1.0)
            await uploader.close()
        await close_clients()


def spool_name(worker_id: str) -> str:
    """Each worker of a node spools into a directory of its own (``spool``, then
    ``spool-w1``, ...), so that a worker that restarts finds exactly the files it left."""
    index = worker_id.rsplit("/w", 1)[-1] if "/w" in worker_id else "0"
    return "spool" if index in ("", "0") else f"spool-w{index}"


def _dump_mixconfig(mixconfig: MixConfig) -> dict[str, Any]:
    return mixconfig.model_dump(mode="json", by_alias=True, exclude_none=True)


def task_mixconfig(task: Task) -> MixConfig:
    """The layout a mixed task runs with: its latest update, else its startrecord's."""
    data = task.progress.get("mixconfig")
    if data is None:
        data = dict(task.request["mixconfig"])
        if "input_list" in data:  # the request was stored by field name
            data["input"] = data.pop("input_list")
    return MixConfig.model_validate_json(json.dumps(data))


def _mixed_tracks(req: Any) -> frozenset[str]:
    """The tracks a mixed start records; 4004 when recordtype asks for one the output lacks."""
    kinds = mixed_kinds(req.recordtype, req.mixconfig)
    if not kinds:
        raise RecordingError(
            f"recordtype {req.recordtype} asks for a track that mixconfig.output.streamtype "
            f"{req.mixconfig.output.streamtype} does not have", 4004)
    return kinds
