"""One source-stream recording: a uid's encoded media → HLS in the spool → the task's store.

The loop pulls ``(uid, EncodedFrame)`` from the room's subscription and pushes them into
``SourceHlsRecorder`` (remux for H.264, Opus → AAC). Each closed segment goes to the
``SpoolUploader``, then the playlist that lists it. The loop ends on ``stop()`` (reason api),
after ``idle_timeout_s`` without media (reason idle) or on an error (reason error); the
last segment and the playlist with ``#EXT-X-ENDLIST`` are then stored before the task is
marked stopped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, Callable

from cloudrec.errors import CloudrecError
from cloudrec.media import SegmentInfo, SourceHlsRecorder
from cloudrec.mediatypes import EncodedFrame
from cloudrec.rooms import RoomHub, Subscription, SubscriptionClosed
from cloudrec.storage import ObjectStore, SpoolUploader
from cloudrec.tasks import Status, StopReason, Task, TaskStore

log = logging.getLogger(__name__)

BATCH_S = 0.05  # how often the recording loop drains its subscription


def basename_for(task: Task) -> str:
    """SPEC §4: ``{appid}_{roomid}_{recordid}[_{uid}]``."""
    base = f"{task.appid}_{task.roomid}_{task.recordid}"
    return f"{base}_{task.uid}" if task.uid else base


def prefix_for(storagecfg: dict[str, Any]) -> str:
    items = storagecfg.get("fileprefix") or []
    return "".join(f"{item}/" for item in items)


class SourceRecording:
    def __init__(
        self,
        task: Task,
        *,
        hub: RoomHub,
        tasks: TaskStore,
        store: ObjectStore,
        spool_dir: Path,
        kinds: frozenset[str],
        idle_timeout_s: float,
        segment_seconds: float,
        stop_timeout_s: float,
        on_finished: Callable[[str], None],
        emit: Callable[..., None] | None = None,
        resumed: bool = False,
    ) -> None:
        self.task = task
        self.hub = hub
        self.tasks = tasks
        self.spool_dir = spool_dir
        self.kinds = kinds
        self.idle_timeout_s = idle_timeout_s
        self.segment_seconds = segment_seconds
        self.stop_timeout_s = stop_timeout_s
        self.on_finished = on_finished
        self._emit_event = emit
        self.resumed = resumed
        self._closing = False
        self.basename = basename_for(task)
        self.prefix = prefix_for(task.request["storagecfg"])
        self.uploader = SpoolUploader(
            store, self.prefix, spool_dir, on_stored=self._on_stored, on_error=self._on_store_error
        )
        self.recorder: SourceHlsRecorder | None = None
        self.stop_reason: StopReason | None = None
        self.error: str | None = None
        self.storage_error: str | None = None
        self.finished = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._recording = False
        self._subscription: Subscription | None = None

    # -- control --------------------------------------------------------------------------------

    def start(self, *, resume: bool) -> None:
        self._runner = asyncio.get_running_loop().create_task(self._run(resume))

    async def stop(self, reason: StopReason, timeout: float | None = None) -> bool:
        """Ask the recording to stop; wait until its files are stored (or ``timeout``)."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self._stop_requested.set()
        if self._subscription is not None:
            self._subscription.close()
        try:
            await asyncio.wait_for(asyncio.shield(self.finished.wait()), timeout)
        except TimeoutError:
            return False
        return True

    # -- the loop -------------------------------------------------------------------------------

    async def _run(self, resume: bool) -> None:
        sub = self._subscription = self.hub.subscribe(self.task.appid, self.task.roomid, self.task.uid)
        uid = self.task.uid or ""
        try:
            self.recorder = SourceHlsRecorder(
                self.spool_dir,
                self.basename,
                audio="audio" in self.kinds,
                video="video" in self.kinds,
                segment_seconds=self.segment_seconds,
                on_segment=self._on_segment,
                request_keyframe=lambda: sub.request_keyframe(uid),
                resume=resume,
            )
            if resume:
                self.uploader.submit_pending(self.recorder.playlist_path)
            self.tasks.set_status(self.task.recordid, Status.STARTING)
            sub.request_keyframe(uid)
            await self._pump(sub)
        except SubscriptionClosed:
            pass  # stop() closed it
        except Exception as exc:  # media or storage failure: end the task with reason error
            log.exception("recording %s failed", self.task.recordid)
            self.error = f"{type(exc).__name__}: {exc}"
            self.stop_reason = StopReason.ERROR
        finally:
            sub.close()
            await self._finish()

    async def _pump(self, sub: Subscription) -> None:
        """Drain the subscription in batches: one wake-up per ``BATCH_S`` instead of one per
        frame keeps the per-frame cost of the loop near zero (recording needs no low latency)."""
        last_media = time.monotonic()
        while not self._stop_requested.is_set():
            while True:
                try:
                    item = sub.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if isinstance(item, tuple):
                    self._push(item[1])
                    last_media = time.monotonic()
            if time.monotonic() - last_media > self.idle_timeout_s:
                log.info("recording %s: no media for %.0f s, stopping",
                         self.task.recordid, self.idle_timeout_s)
                if self.stop_reason is None:
                    self.stop_reason = StopReason.IDLE
                    if self.resumed and not self._recording:
                        # Resumed after a crash or restart, and the publisher never came back.
                        self.stop_reason = StopReason.ERROR
                        self.error = ("the service restarted during the recording and the "
                                      f"publisher did not return within {self.idle_timeout_s:.0f} s")
                return
            await asyncio.sleep(BATCH_S)

    def _push(self, frame: EncodedFrame) -> None:
        assert self.recorder is not None
        self.recorder.push(frame)
        if not self._recording and self.recorder.duration > 0:
            self._recording = True
            self.tasks.set_status(self.task.recordid, Status.RECORDING)
            self._emit("recording.started", playlist=self.prefix + self.basename + ".m3u8",
                       resumed=self.resumed)

    async def _finish(self) -> None:
        try:
            self.tasks.set_status(self.task.recordid, Status.STOPPING)
            if self.recorder is not None:
                try:
                    self.recorder.close()
                except Exception as exc:
                    log.exception("closing recording %s failed", self.task.recordid)
                    self.error = self.error or f"{type(exc).__name__}: {exc}"
                    self.stop_reason = StopReason.ERROR
                self._closing = True
                self.uploader.submit_playlist(self.recorder.playlist_path)
            stored = await self.uploader.drain(self.stop_timeout_s)
            self._save_progress()
            if not stored:
                # The files stay in the spool and are stored after the store recovers; the
                # task is stopped all the same (nothing is lost: see RecordingService.recover).
                log.warning("recording %s stopped with %d files not yet stored",
                            self.task.recordid, self.uploader.pending)
            reason = self.stop_reason or StopReason.ERROR
            failed = reason == StopReason.ERROR and self.error is not None
            self.tasks.set_status(
                self.task.recordid,
                Status.FAILED if failed else Status.STOPPED,
                stopreason=str(reason),
                error=self.error,
            )
            progress = self.progress()
            if failed:
                self._emit("recording.failed", reason=str(reason), error=self.error, **progress)
            self._emit("recording.stopped", reason=str(reason), error=self.error, **progress)
        finally:
            self.finished.set()
            self.on_finished(self.task.recordid)

    # -- progress -------------------------------------------------------------------------------

    def _on_segment(self, segment: SegmentInfo) -> None:
        assert self.recorder is not None
        self.uploader.submit_segment(segment.path)
        self.uploader.submit_playlist(self.recorder.playlist_path)
        self._save_progress()

    def _on_stored(self, name: str, size: int) -> None:
        if name.endswith(".ts"):
            self._emit("file.uploaded", file=self.prefix + name, kind="segment", size=size)
        elif self._closing:
            self._emit("file.uploaded", file=self.prefix + name, kind="playlist", size=size,
                       final=True)
        if name.endswith(".m3u8"):
            self._save_progress()

    def _emit(self, event_type: str, **data: Any) -> None:
        if self._emit_event is not None:
            self._emit_event(event_type, data)

    def _on_store_error(self, message: str | None) -> None:
        self.storage_error = message
        self._save_progress()

    def progress(self) -> dict[str, Any]:
        rec = self.recorder
        return {
            "kinds": sorted(self.kinds),
            "playlist": self.prefix + self.basename + ".m3u8",
            "segments": len(rec.segments) if rec else 0,
            "duration": round(rec.duration, 3) if rec else 0.0,
            "storedfiles": self.uploader.stored_files,
            "storedbytes": self.uploader.stored_bytes,
            "pendingfiles": self.uploader.pending,
            "storageerror": self.storage_error,
            "videotranscoded": bool(rec and rec.stats.video_transcoded),
        }

    def _save_progress(self) -> None:
        try:
            self.tasks.set_progress(self.task.recordid, self.progress())
        except CloudrecError:
            log.exception("saving progress of %s failed", self.task.recordid)
