"""The end of a recording: waiting for it, holding it while the disk is full, and the files
it leaves in the spool.

The steps of an end that touch the disk (ending the playlist, queueing the last files, writing
the final state, queueing the closing events) run through :meth:`Ending.durably`: retried with
backoff until they succeed, so a full disk holds the end of a recording and never loses it.
While it holds, :meth:`Ending.wait` answers at once with :class:`DiskFullError` instead of
waiting out its timeout.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cloudrec.diskfull import DiskFullError, is_disk_full
from cloudrec.media.hls import HlsPlaylist, SegmentInfo
from cloudrec.storage import SpoolUploader

log = logging.getLogger(__name__)

RETRY_S = 0.5  # first pause of a step of the recording's end that failed; doubles up to
MAX_RETRY_S = 5.0  # short enough that a disk with room again is noticed at once


class HlsMedia(Protocol):
    """A recording's media as its ending reads it (read-only: plain attributes or properties)."""

    @property
    def playlist_path(self) -> Path: ...

    @property
    def segments(self) -> list[SegmentInfo]: ...

    @property
    def duration(self) -> float: ...


@dataclass
class SpoolMedia:
    """What the spool holds of a recording whose media never opened this time (a resumed task
    on a full disk): its playlist and the segments it lists."""

    playlist_path: Path
    segments: list[SegmentInfo]

    @property
    def duration(self) -> float:
        return sum(s.duration for s in self.segments)

    @classmethod
    def find(cls, spool_dir: Path, basename: str) -> SpoolMedia | None:
        path = spool_dir / f"{basename}.m3u8"
        if not path.exists():
            return None
        return cls(path, HlsPlaylist(path, 6.0).load())


def retryable(exc: BaseException) -> bool:
    """Worth trying again later: a full disk, a file system or database that failed for now.
    Anything else (a closed store at shutdown, a bug) is not."""
    return is_disk_full(exc) or isinstance(exc, (OSError, sqlite3.OperationalError))


def end_playlist(media: HlsMedia, spool_dir: Path, segment_seconds: float) -> None:
    """The playlist of the segments that were closed, with ``#EXT-X-ENDLIST``, after the
    media could not close itself. Unfinished segments go first: they free their space."""
    for part in spool_dir.glob("*.part"):
        part.unlink(missing_ok=True)
    HlsPlaylist(media.playlist_path, segment_seconds).write(list(media.segments), ended=True)


def queue_last_files(media: HlsMedia, uploader: SpoolUploader) -> None:
    """Segments the media closed but never handed over (a full disk can fail the playlist
    write between the two), then the final playlist."""
    uploader.submit_missing(list(media.segments))
    if media.playlist_path.exists():
        uploader.submit_playlist(media.playlist_path)


class Ending:
    def __init__(self, recordid: str) -> None:
        self.recordid = recordid
        self.finished = asyncio.Event()  # the recording ended: files stored or given up
        self.held = asyncio.Event()  # the end waits for room on the disk
        self.held_by: str | None = None

    async def wait(self, timeout: float | None) -> bool:
        """Whether the recording ended within ``timeout``. Raises DiskFullError when its end
        is held by a full disk: the answer comes now, and says why."""
        finished = asyncio.ensure_future(self.finished.wait())
        held = asyncio.ensure_future(self.held.wait())
        try:
            await asyncio.wait({finished, held}, timeout=timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            finished.cancel()
            held.cancel()
        if self.finished.is_set():
            return True
        if self.held.is_set():
            raise DiskFullError(
                f"recording {self.recordid} has failed ({self.held_by}); its last files "
                "are stored and its playlist ended as soon as there is room")
        return False

    async def durably(self, what: str, action: Callable[[], object]) -> None:
        """Run ``action`` until it succeeds, pausing RETRY_S doubling to MAX_RETRY_S between
        tries: a full disk holds the end of a recording, it does not lose it. The first failure
        and the recovery are logged; an error that is not worth retrying ends the attempt."""
        delay = RETRY_S
        failing = False
        while True:
            try:
                action()
            except Exception as exc:
                if not retryable(exc):
                    log.exception("recording %s: %s failed", self.recordid, what)
                    return
                if is_disk_full(exc):
                    self.held_by = f"the server's disk is full: {exc}"
                    self.held.set()
                if not failing:
                    log.error("recording %s: %s failed (%s); retrying until it can be done",
                              self.recordid, what, exc)
                    failing = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_S)
                continue
            if failing:
                log.info("recording %s: %s done", self.recordid, what)
            self.held.clear()
            self.held_by = None
            return
