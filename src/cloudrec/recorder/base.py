"""What every recording shares: file names, the spool uploader, progress in the task store,
callback events and the end of a recording (last files stored, final state, events).

A subclass runs its media and calls :meth:`Recording._finish` once its loop is over; it adds
its own fields to :meth:`progress` through :meth:`_media_progress` and may close its media in
:meth:`_close_media`.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, Callable, Protocol

from cloudrec.errors import CloudrecError
from cloudrec.media import SegmentInfo
from cloudrec.storage import ObjectStore, SpoolUploader
from cloudrec.tasks import Status, StopReason, Task, TaskStore

log = logging.getLogger(__name__)


def basename_for(task: Task) -> str:
    """SPEC §4: ``{appid}_{roomid}_{recordid}[_{uid}]``."""
    base = f"{task.appid}_{task.roomid}_{task.recordid}"
    return f"{base}_{task.uid}" if task.uid else base


def prefix_for(storagecfg: dict[str, Any]) -> str:
    items = storagecfg.get("fileprefix") or []
    return "".join(f"{item}/" for item in items)


class HlsMedia(Protocol):
    playlist_path: Path
    segments: list[SegmentInfo]

    @property
    def duration(self) -> float: ...


class Recording:
    def __init__(
        self,
        task: Task,
        *,
        tasks: TaskStore,
        store: ObjectStore,
        spool_dir: Path,
        kinds: frozenset[str],
        stop_timeout_s: float,
        on_finished: Callable[[str], None],
        emit: Callable[[str, dict[str, Any]], None] | None = None,
        resumed: bool = False,
    ) -> None:
        self.task = task
        self.tasks = tasks
        self.spool_dir = spool_dir
        self.kinds = kinds
        self.stop_timeout_s = stop_timeout_s
        self.on_finished = on_finished
        self.resumed = resumed
        self.basename = basename_for(task)
        self.prefix = prefix_for(task.request["storagecfg"])
        self.uploader = SpoolUploader(
            store, self.prefix, spool_dir, on_stored=self._on_stored, on_error=self._on_store_error
        )
        self.recorder: HlsMedia | None = None
        self.stop_reason: StopReason | None = None
        self.error: str | None = None
        self.storage_error: str | None = None
        self.finished = asyncio.Event()
        self._emit_event = emit
        self._stop_requested = asyncio.Event()
        self._closing = False
        self._recording = False

    # -- stopping -------------------------------------------------------------------------------

    async def stop(self, reason: StopReason, timeout: float | None = None) -> bool:
        """Ask the recording to stop; wait until its files are stored (or ``timeout``)."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self._stop_requested.set()
        self._on_stop_requested()
        try:
            await asyncio.wait_for(asyncio.shield(self.finished.wait()), timeout)
        except TimeoutError:
            return False
        return True

    def _on_stop_requested(self) -> None:
        """Wake the media loop; subclasses override."""

    def _close_media(self) -> None:
        """Close the last segment (``#EXT-X-ENDLIST``); subclasses whose media is still open."""

    def _started(self) -> None:
        """The first media is written: status recording, event ``recording.started``."""
        if self._recording:
            return
        self._recording = True
        self.tasks.set_status(self.task.recordid, Status.RECORDING)
        self._emit("recording.started", playlist=self.prefix + self.basename + ".m3u8",
                   resumed=self.resumed)

    async def _finish(self) -> None:
        """Store the last files, record the final state and send the closing events."""
        try:
            self.tasks.set_status(self.task.recordid, Status.STOPPING)
            try:
                self._close_media()
            except Exception as exc:
                log.exception("closing recording %s failed", self.task.recordid)
                self.error = self.error or f"{type(exc).__name__}: {exc}"
                self.stop_reason = StopReason.ERROR
            if self.recorder is not None:
                self._closing = True
                self.uploader.submit_playlist(self.recorder.playlist_path)
            stored = await self.uploader.drain(self.stop_timeout_s)
            self._save_progress()
            if not stored:
                # The files stay in the spool and are stored once the store recovers; the task
                # is stopped all the same (RecordingService keeps uploading them).
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
            summary = self._summary()
            if failed:
                self._emit("recording.failed", reason=str(reason), error=self.error, **summary)
            self._emit("recording.stopped", reason=str(reason), error=self.error, **summary)
        finally:
            self.finished.set()
            self.on_finished(self.task.recordid)

    # -- files and progress ---------------------------------------------------------------------

    def _on_segment(self, segment: SegmentInfo) -> None:
        """A segment closed and the spool's playlist lists it: store both, in that order."""
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

    def _on_store_error(self, message: str | None) -> None:
        self.storage_error = message
        self._save_progress()

    def _emit(self, event_type: str, **data: Any) -> None:
        if self._emit_event is not None:
            self._emit_event(event_type, data)

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
            **self._media_progress(),
        }

    def _media_progress(self) -> dict[str, Any]:
        return {}

    def _summary(self) -> dict[str, Any]:
        """What the closing events carry: the progress, less what only a restart needs."""
        return self.progress()

    def _save_progress(self) -> None:
        try:
            self.tasks.set_progress(self.task.recordid, self.progress())
        except CloudrecError:
            log.exception("saving progress of %s failed", self.task.recordid)
