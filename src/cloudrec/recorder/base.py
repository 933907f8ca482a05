"""What every recording shares: file names, the spool uploader, progress in the task store
(:mod:`~cloudrec.recorder.progress`), callback events (:mod:`~cloudrec.recorder.events`) and
the end of a recording: last files stored, final state, events
(:mod:`~cloudrec.recorder.lifecycle`).

A subclass runs its media and calls :meth:`Recording._finish` once its loop is over; it adds
its own fields to :meth:`progress` through :meth:`_media_progress` and may close its media in
:meth:`_close_media`.

Faults. The spool, the task store and the outbox usually share one disk (``data_dir``), and
when it fills they all fail at once. A recording then:

- fails with reason ``error`` and an ``error`` that starts with ``disk full:`` (logged);
- keeps its end pending until there is room again, retrying each step with backoff: ending the
  playlist (``#EXT-X-ENDLIST``, listing every segment that was closed), queueing it and the
  segments that were never queued, writing the final state and queueing the closing events
  (``recording.failed`` then ``recording.stopped``);
- meanwhile answers ``queryrecord`` with the state the task store could not take yet
  (:meth:`progress` carries ``status``, ``stopreason`` and ``error`` while the store lags), and
  ``stoprecord`` with :class:`~cloudrec.diskfull.DiskFullError` (2104 naming the disk) instead
  of waiting out ``stop_timeout_s``.

A write to the task store or the outbox that fails along the way (progress, a status, an event)
never ends the recording or its uploader: progress is saved again on the next change, events
wait in order in memory until the outbox takes them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cloudrec import metrics
from cloudrec.diskfull import is_disk_full, is_disk_full_text
from cloudrec.media.hls import SegmentInfo
from cloudrec.recorder.events import Emit, EventQueue
from cloudrec.recorder.lifecycle import Ending, HlsMedia, SpoolMedia, end_playlist, queue_last_files
from cloudrec.recorder.outputs import RecordingOutputs, first_frame_ms
from cloudrec.recorder.progress import TaskState
from cloudrec.storage import ObjectStore, SpoolUploader
from cloudrec.tasks import Status, StopReason, Task, TaskStore
from cloudrec.tasks.pause import PauseState, check_not_stopping

log = logging.getLogger(__name__)


def basename_for(task: Task) -> str:
    """The name of a task's files: ``{appid}_{roomid}_{recordid}[_{uid}]``."""
    base = f"{task.appid}_{task.roomid}_{task.recordid}"
    return f"{base}_{task.uid}" if task.uid else base


def prefix_for(storagecfg: dict[str, Any]) -> str:
    items = storagecfg.get("fileprefix") or []
    return "".join(f"{item}/" for item in items)


def next_segment(saved: dict[str, Any], segments: list[SegmentInfo]) -> int:
    """The least sequence number a resume elsewhere may give a new segment: past the last
    listed one and the one open after it (whose file a dead node may still have closed)."""
    known = int(saved.get("nextsegment") or 0)
    return max(known, segments[-1].index + 2) if segments else known


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
        emit: Emit | None = None,
        resumed: bool = False,
        pause_timeout_s: float = 3600.0,
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
        self.ending = Ending(task.recordid)
        self.finished = self.ending.finished
        self.events = EventQueue(task.recordid, emit)
        self.state = TaskState(tasks, task.recordid)
        self._stop_requested = asyncio.Event()
        self._closing = False
        self._recording = False
        self._inits: set[str] = set()  # fMP4 initialisation sections queued for upload
        self.outputs = RecordingOutputs(self)  # MP4, snapshots and the file list
        self.pause_timeout_s = pause_timeout_s
        self.pause_state = PauseState.from_progress(task.progress)  # paused before a restart

    # -- pause and resume (see cloudrec.tasks.pause) ------------------------------------------

    def pause(self) -> dict[str, Any]:
        """pauserecord: 4004 when paused already or stopping."""
        check_not_stopping(self.task.recordid, self._stop_requested.is_set())
        self.pause_state.pause(self.task.recordid)
        self._pause_media()
        self._save_progress()
        log.info("recording %s paused", self.task.recordid)
        return self.pause_state.progress()

    def resume(self) -> dict[str, Any]:
        """resumerecord: 4004 when not paused or stopping."""
        check_not_stopping(self.task.recordid, self._stop_requested.is_set())
        lasted = self.pause_state.resume(self.task.recordid)
        self._resume_media()
        self._save_progress()
        log.info("recording %s resumed after %.1f s paused", self.task.recordid, lasted)
        return self.pause_state.progress()

    def _pause_media(self) -> None:
        """Close the open segment and write nothing more; subclasses."""

    def _resume_media(self) -> None:
        """Write again, after #EXT-X-DISCONTINUITY, with no gap in time; subclasses."""

    def _pause_expired(self) -> bool:
        """Paused longer than ``pause_timeout_s``: the recording stops with reason paused."""
        if not self.pause_state.expired(self.pause_timeout_s):
            return False
        log.info("recording %s: paused for more than %.0f s, stopping", self.task.recordid,
                 self.pause_timeout_s)
        if self.stop_reason is None:
            self.stop_reason = StopReason.PAUSED
        return True

    # -- stopping -------------------------------------------------------------------------------

    async def stop(self, reason: StopReason, timeout: float | None = None) -> bool:
        """Ask the recording to stop; wait until its files are stored (or ``timeout``). Raises
        DiskFullError when its end is held by a full disk: the answer comes now, not after
        ``timeout``, and says why."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self._stop_requested.set()
        self._on_stop_requested()
        return await self.ending.wait(timeout)

    def _on_stop_requested(self) -> None:
        """Wake the media loop; subclasses override."""

    def _close_media(self) -> None:
        """Close the last segment (``#EXT-X-ENDLIST``); subclasses whose media is still open."""

    def _started(self) -> None:
        """The first media is written: status recording, event ``recording.started``."""
        if self._recording:
            return
        self._recording = True
        self._set_status(Status.RECORDING)
        playlist = self.prefix + self.basename + ".m3u8"
        metrics.counters.recording_started(self.task.streamtype)
        self._log_event(logging.INFO, "started",
                        f"{'resumed' if self.resumed else 'started'}, playlist {playlist}",
                        playlist=playlist, resumed=self.resumed)
        self._emit("recording.started", playlist=playlist, resumed=self.resumed)

    def _fail(self, exc: BaseException) -> None:
        """End the recording with reason error; a full disk is named as such."""
        if is_disk_full(exc):
            log.error("recording %s: the disk is full: %s", self.task.recordid, exc)
            error = f"disk full: {exc}"
        else:
            error = f"{type(exc).__name__}: {exc}"
        self.error = self.error or error
        self.stop_reason = StopReason.ERROR

    async def _finish(self) -> None:
        """Store the last files, record the final state and send the closing events. Never
        raises: whatever happens, the recording ends and says so in the log."""
        try:
            await self._wind_up()
        except Exception:
            log.exception("ending recording %s failed", self.task.recordid)
        finally:
            self._log_end()
            self.finished.set()
            self.on_finished(self.task.recordid)

    async def _wind_up(self) -> None:
        if self.error and is_disk_full_text(self.error) and not self.error.startswith("disk full"):
            self.error = f"disk full: {self.error}"
        self._set_status(Status.STOPPING)
        ended = True
        try:
            self._close_media()
        except Exception as exc:
            log.exception("closing recording %s failed", self.task.recordid)
            self._fail(exc)
            ended = False
        if self.recorder is None:  # resumed, and failed before its media opened
            self.recorder = SpoolMedia.find(self.spool_dir, self.basename)
            ended = self.recorder is None
        if self.recorder is not None:
            media = self.recorder
            if not ended:
                segment_s = getattr(self, "segment_seconds", 6.0)
                await self.ending.durably("ending the playlist", lambda: end_playlist(
                    media, self.spool_dir, segment_s))
            self._closing = True
            await self.ending.durably("queueing the last files",
                                      lambda: queue_last_files(media, self.uploader))
            await self.outputs.finish(list(media.segments))
        stored = await self.uploader.drain(self.stop_timeout_s)
        self._save_progress()
        if not stored:
            # The files stay in the spool and are stored once the store (or the disk) recovers;
            # the task is stopped all the same (RecordingService keeps uploading them).
            log.warning("recording %s stopped with %d files not yet stored",
                        self.task.recordid, self.uploader.pending)
        reason = self.stop_reason or StopReason.ERROR
        failed = reason == StopReason.ERROR and self.error is not None
        final = Status.FAILED if failed else Status.STOPPED
        await self.ending.durably("recording the final state", lambda: self.state.write_status(
            final, error=self.error, reason=self.stop_reason or StopReason.ERROR))
        summary = self._summary()
        if failed:
            self._emit("recording.failed", reason=str(reason), error=self.error, **summary)
        self._emit("recording.stopped", reason=str(reason), error=self.error, **summary)
        await self.ending.durably("queueing the closing events", self.events.flush)

    def _log_end(self) -> None:
        """The story's last line (WARNING when the recording failed) and the end's counters."""
        reason = str(self.stop_reason or StopReason.ERROR)
        try:
            progress = self._progress()
        except Exception:
            progress = {}
        metrics.counters.recording_ended(self.task.streamtype, reason, progress)
        segments, duration = progress.get("segments", 0), progress.get("duration", 0.0)
        text = (f"stopped, reason {reason}: {segments} segments, {duration:.1f} s, "
                f"{progress.get('pendingfiles', 0)} files not yet stored")
        if self.error:
            text += f"; error: {self.error}"
        self._log_event(logging.WARNING if self.error else logging.INFO, "stopped", text,
                        reason=reason, error=self.error, segments=segments, duration=duration,
                        pendingfiles=progress.get("pendingfiles", 0))

    def _log_event(self, level: int, event: str, text: str, **fields: Any) -> None:
        """One log line per recording event: the message reads on its own in text logs, and
        JSON logs (``log_format = "json"``) carry ``event``, the task's identity and
        ``fields`` as their own keys."""
        task = self.task
        who = f"app {task.appid} room {task.roomid}" + (f" uid {task.uid}" if task.uid else "")
        log.log(level, "recording %s (%s, %s): %s", task.recordid,
                metrics.recording_type(task.streamtype), who, text,
                extra={"event": f"recording.{event}", "recordid": task.recordid,
                       "appid": task.appid, "roomid": task.roomid, "uid": task.uid,
                       "type": metrics.recording_type(task.streamtype), **fields})

    # -- the task store ---------------------------------------------------------------------------

    def _set_status(self, status: Status) -> None:
        """Record ``status`` now if the task store takes it (see :class:`TaskState`)."""
        self.state.set_status(status, error=self.error)

    # -- files and progress ---------------------------------------------------------------------

    def _on_segment(self, segment: SegmentInfo) -> None:
        """A segment closed and the spool's playlist lists it: store both, in that order."""
        assert self.recorder is not None
        metrics.counters.segments_written += 1
        self.outputs.on_segment(segment)
        if segment.init is not None and segment.init not in self._inits:  # fMP4: its init first
            self._inits.add(segment.init)
            self.uploader.submit_segment(segment.path.with_name(segment.init))
        self.uploader.submit_segment(segment.path)
        self._list_returned_segments()
        self.uploader.submit_playlist(self.recorder.playlist_path)
        self._save_progress()

    def _list_returned_segments(self) -> None:
        """Segments a node that came back stored for this task (its spool's, from before it
        died) are listed in this playlist in their place: the task store hands them over."""
        merge = getattr(self.recorder, "merge_segments", None)
        if merge is None:
            return
        recordid = self.task.recordid
        try:
            entries = self.tasks.returned_segments(recordid)
            if not entries:
                return
            spool = self.uploader.spool_dir
            merge([SegmentInfo(index=int(e["index"]), name=e["name"], path=spool / e["name"],
                               duration=float(e["duration"]),
                               discontinuity=bool(e["discontinuity"]), size=int(e["size"]),
                               date=e.get("date")) for e in entries])
            self.tasks.forget_returned_segments(recordid, [e["name"] for e in entries])
            log.info("recording %s: %d segment(s) a returning node stored are listed",
                     recordid, len(entries))
        except Exception:  # the task store is down: the next segment tries again
            log.warning("recording %s: returned segments not listed yet", recordid,
                        exc_info=True)

    def _on_stored(self, name: str, size: int) -> None:
        kind = self.outputs.on_stored(name, size)  # "mp4", "snapshot" or None
        if kind is not None:
            self._emit("file.uploaded", file=self.prefix + name, kind=kind, size=size)
            if self._closing:
                self._save_progress()
        elif name.endswith("_init.mp4"):
            self._emit("file.uploaded", file=self.prefix + name, kind="init", size=size)
        elif name.endswith((".ts", ".m4s")):
            self._log_event(logging.INFO, "segment_stored",
                            f"segment stored: {self.prefix + name} ({size} bytes)",
                            file=self.prefix + name, size=size)
            self._emit("file.uploaded", file=self.prefix + name, kind="segment", size=size)
        elif self._closing:
            self._emit("file.uploaded", file=self.prefix + name, kind="playlist", size=size,
                       final=True)
        if name.endswith(".m3u8"):
            self._save_progress()

    def _on_store_error(self, message: str | None) -> None:
        if message != self.storage_error:  # once per new error, and once on recovery
            if message is None:
                self._log_event(logging.INFO, "storage_recovered", "storage works again")
            else:
                self._log_event(logging.WARNING, "storage_error",
                                f"storage error: {message} (retrying)", error=message)
        self.storage_error = message
        self._save_progress()

    def _emit(self, event_type: str, **data: Any) -> None:
        """Queue an event (see :class:`EventQueue`)."""
        self.events.emit(event_type, data)

    def progress(self) -> dict[str, Any]:
        """What queryrecord shows beyond the task's columns, and while the task store lags
        behind this recording, the state it could not take (``status``, ``stopreason``,
        ``error``)."""
        progress = self._progress()
        progress.setdefault("files", self.outputs.files())
        return self.state.overlay(progress, self.stop_reason, self.error)

    def _progress(self) -> dict[str, Any]:
        rec = self.recorder
        progress: dict[str, Any] = {
            "kinds": sorted(self.kinds),
            "playlist": self.prefix + self.basename + ".m3u8",
            "segments": len(rec.segments) if rec else 0,
            "firstframetime": first_frame_ms(rec.segments) if rec else None,
            "nextsegment": next_segment(self.task.progress, rec.segments if rec else []),
            "duration": round(rec.duration, 3) if rec else 0.0,
            "storedfiles": self.uploader.stored_files,
            "storedbytes": self.uploader.stored_bytes,
            "pendingfiles": self.uploader.pending,
            "storageerror": self.storage_error,
            **self.pause_state.progress(),
            **self._media_progress(),
        }
        if self.outputs.warnings:
            progress["warnings"] = [*progress.get("warnings", []), *self.outputs.warnings]
        if self._closing:  # the file list grows with every segment: saved once, at the end
            progress["files"] = self.outputs.files()
        return progress

    def _media_progress(self) -> dict[str, Any]:
        return {}

    def _summary(self) -> dict[str, Any]:
        """What the closing events carry: the progress, less what only a restart needs."""
        return self.progress()

    def _save_progress(self) -> None:
        """Best effort: a failed write is logged once and made good by the next one."""
        self.state.save_progress(self._progress())
