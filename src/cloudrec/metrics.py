"""What a worker reports of its recordings' work, for the node's ``/metrics``.

Where the numbers live. A node's recordings run in worker processes, and prometheus-client's
multiprocess mode (a directory of mmapped files shared by every process, cleaned up by hand
when one dies) would be one more thing to break on a restart. Instead:

- each process counts its recordings' work in plain integers, :data:`counters` (a worker
  process is one worker; with ``workers = 1`` the front process is its one worker);
- :func:`worker_snapshot` turns them, with gauges read from the worker's rooms and
  recordings, into JSON that the worker's status carries; the front polls that every second
  anyway (for placement) and keeps the latest snapshot of each worker;
- the front exposes those snapshots with a ``worker`` label (:mod:`cloudrec.api.metrics`).

A worker that restarts starts its counters from zero, which Prometheus reads as a counter reset
(``rate()`` and ``increase()`` handle it). A scrape shows each worker as of its last status,
at most a second old.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol


def recording_type(streamtype: int) -> str:
    """``mixed`` for streamtype 1, else ``source``."""
    return "mixed" if streamtype == 1 else "source"


class Counters:
    """What this process's recordings did since it started: plain integers, bumped on the
    event loop (no locks needed), read by :func:`worker_snapshot`."""

    def __init__(self) -> None:
        self.segments_written = 0  # closed by a recorder and handed to the spool
        self.segments_stored = 0  # confirmed by the store
        self.files_stored = 0  # segments and playlists
        self.bytes_uploaded = 0
        self.upload_failures = 0  # attempts that failed (each is retried)
        self.frames_skipped = 0  # of recordings that have ended; running ones are added live
        self.frames_dropped = 0
        self.recordings_started: dict[str, int] = {}  # type -> n
        self.recordings_stopped: dict[str, int] = {}  # "type/reason" -> n
        self.ingests_active: dict[str, int] = {}  # push publishers now, by kind ("rtmp", "srt")
        self.ingests_started: dict[str, int] = {}  # kind -> n
        self.ingest_reconnects: dict[str, int] = {}  # kind -> publishes of a uid just seen

    def stored(self, name: str, size: int) -> None:
        self.files_stored += 1
        self.bytes_uploaded += size
        if name.endswith((".ts", ".m4s")):
            self.segments_stored += 1

    def recording_started(self, streamtype: int) -> None:
        kind = recording_type(streamtype)
        self.recordings_started[kind] = self.recordings_started.get(kind, 0) + 1

    def recording_ended(self, streamtype: int, reason: str, progress: dict[str, Any]) -> None:
        """A recording's end: its frames skipped and dropped move from live to done."""
        key = f"{recording_type(streamtype)}/{reason}"
        self.recordings_stopped[key] = self.recordings_stopped.get(key, 0) + 1
        self.frames_skipped += int(progress.get("framesskipped") or 0)
        self.frames_dropped += int(progress.get("framesdropped") or 0)


#: This process's counters.
counters = Counters()


def spool_bytes(root: Path) -> int:
    """Bytes of the files under a spool directory (two levels: task, file)."""
    total = 0
    try:
        tasks = list(os.scandir(root))
    except OSError:
        return 0
    for task in tasks:
        try:
            if not task.is_dir(follow_symlinks=False):
                continue
            for entry in os.scandir(task.path):
                try:
                    if entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
                except OSError:
                    pass  # uploaded and deleted meanwhile
        except OSError:
            pass
    return total


class _Task(Protocol):
    streamtype: int


class _Uploader(Protocol):
    @property
    def pending_segments(self) -> int: ...


class _Recording(Protocol):
    task: _Task
    uploader: _Uploader

    def progress(self) -> dict[str, Any]: ...


class _Spool(Protocol):
    @property
    def root(self) -> Path: ...


class Recordings(Protocol):
    """A worker's recordings (:class:`cloudrec.recorder.RecordingService`)."""

    recordings: Any  # recordid -> a running recording (_Recording)

    @property
    def spool(self) -> _Spool: ...

    def leftover_segments(self) -> int: ...


class Rooms(Protocol):
    """A worker's rooms (:class:`cloudrec.rooms.RoomHub`)."""

    def publisher_count(self) -> int: ...

    def frames_received(self) -> dict[str, int]: ...


def worker_snapshot(hub: Rooms, service: Recordings) -> dict[str, Any]:
    """The worker's metrics as JSON, for its status: :data:`counters` plus what is running now
    (recordings by type, segments waiting in the spool, the spool's size, frames received)."""
    active = {"source": 0, "mixed": 0}
    skipped, dropped, pending = counters.frames_skipped, counters.frames_dropped, 0
    recording: _Recording
    for recording in list(service.recordings.values()):
        active[recording_type(recording.task.streamtype)] += 1
        pending += recording.uploader.pending_segments
        try:
            progress = recording.progress()
        except Exception:  # a recording between states; next second
            continue
        skipped += int(progress.get("framesskipped") or 0)
        dropped += int(progress.get("framesdropped") or 0)
    pending += service.leftover_segments()
    return {
        "publishers": hub.publisher_count(),
        "recordings_active": active,
        "recordings_started": dict(counters.recordings_started),
        "recordings_stopped": dict(counters.recordings_stopped),
        "segments_written": counters.segments_written,
        "segments_stored": counters.segments_stored,
        "segments_pending": pending,
        "files_stored": counters.files_stored,
        "bytes_uploaded": counters.bytes_uploaded,
        "upload_failures": counters.upload_failures,
        "spool_bytes": spool_bytes(service.spool.root),
        "frames_received": hub.frames_received(),
        "frames_skipped": skipped,
        "frames_dropped": dropped,
        "ingests_active": dict(counters.ingests_active),
        "ingests_started": dict(counters.ingests_started),
        "ingest_reconnects": dict(counters.ingest_reconnects),
    }
