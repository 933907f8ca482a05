"""The durable spool: closed files stay on local disk until the store confirms them.

Each task has ``{data_dir}/spool/{recordid}/`` where its recorder writes segments and the
playlist. A ``SpoolUploader`` stores them in order: a segment, then the playlist that lists it,
so the stored playlist never names a segment the store does not have. Failed uploads are retried
with exponential backoff and jitter, forever, without blocking the recorder; a stored segment
is deleted from the spool. After a restart, ``pending()`` finds what was not yet stored.

The uploader never dies with files in its queue: any failure of a store (a full disk under a
local store included) is retried, a callback that raises is logged and ignored, and should its
loop itself fail, it logs the error and starts over. A segment whose spool file is gone can
never be stored: it is logged and skipped, rather than retried forever.
"""

from __future__ import annotations

import asyncio
import logging
import random
import shutil
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

from cloudrec import metrics
from cloudrec.errors import CloudrecError
from cloudrec.storage.base import ObjectStore, content_type_for, object_key

if TYPE_CHECKING:
    from cloudrec.media.hls import SegmentInfo

log = logging.getLogger(__name__)


class Spool:
    def __init__(self, root: Path) -> None:
        self.root = root

    def task_dir(self, recordid: str) -> Path:
        path = self.root / recordid
        path.mkdir(parents=True, exist_ok=True)
        return path

    def existing(self) -> list[str]:
        """Record ids that still have a spool directory."""
        if not self.root.exists():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir())

    def remove(self, recordid: str) -> None:
        shutil.rmtree(self.root / recordid, ignore_errors=True)


@dataclass
class _Item:
    name: str
    path: Path | None = None  # a segment file in the spool
    data: bytes | None = None  # a playlist snapshot, taken when it was submitted


class SpoolUploader:
    """Uploads one task's files in submission order. Never gives up while running."""

    def __init__(
        self,
        store: ObjectStore,
        prefix: str,
        spool_dir: Path,
        *,
        on_stored: Callable[[str, int], None] | None = None,
        on_error: Callable[[str | None], None] | None = None,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
    ) -> None:
        self.store = store
        self.prefix = prefix
        self.spool_dir = spool_dir
        self.on_stored = on_stored
        self.on_error = on_error
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.stored_files = 0
        self.stored_bytes = 0
        self.last_error: str | None = None
        self._queue: deque[_Item] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._submitted: set[str] = set()  # segment names ever queued

    # -- submitting -----------------------------------------------------------------------------

    def submit_segment(self, path: Path) -> None:
        self._submitted.add(path.name)
        self._push(_Item(name=path.name, path=path))

    def submit_missing(self, segments: Iterable[SegmentInfo]) -> int:
        """Queue the segments of this list never queued before whose files are in the spool."""
        missing = [s for s in segments if s.name not in self._submitted and s.path.exists()]
        for segment in missing:
            self.submit_segment(segment.path)
        return len(missing)

    def submit_playlist(self, path: Path) -> None:
        """Snapshot the playlist now; only the newest snapshot waiting in the queue is kept."""
        data = path.read_bytes()
        if self._queue and self._queue[-1].data is not None and self._queue[-1].name == path.name:
            self._queue[-1].data = data
            return
        self._push(_Item(name=path.name, data=data))

    def submit_pending(self, playlist: Path | None) -> int:
        """After a restart: queue every segment still in the spool, then the playlist."""
        inits = sorted(self.spool_dir.glob("*_init.mp4"))  # fMP4: before the segments
        segments = inits + sorted([*self.spool_dir.glob("*.ts"), *self.spool_dir.glob("*.m4s")])
        for seg in segments:
            self.submit_segment(seg)
        if playlist is not None and playlist.exists():
            self.submit_playlist(playlist)
        return len(segments) - len(inits)

    def _push(self, item: _Item) -> None:
        self._queue.append(item)
        self._idle.clear()
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    @property
    def pending(self) -> int:
        return len(self._queue)

    @property
    def pending_segments(self) -> int:
        """Segments among the files waiting (the rest are playlist snapshots)."""
        return sum(1 for item in self._queue if item.path is not None)

    # -- draining -------------------------------------------------------------------------------

    async def drain(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted is stored; False when ``timeout`` ran out first."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])  # a cancellation of close() itself propagates

    async def _run(self) -> None:
        while self._queue:
            try:
                item = self._queue[0]
                if await self._store_with_retry(item):
                    self._queue.popleft()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug; never a silent end with files in the queue
                log.exception("uploader of %s failed; it starts over", self.spool_dir)
                await asyncio.sleep(self.backoff_s)
        self._idle.set()

    def _notify(self, callback: Callable[..., None] | None, *args: object) -> None:
        """Tell the recording; its failure (a task store on a full disk) is not ours."""
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:
            log.exception("uploader of %s: a callback failed", self.spool_dir)

    async def _store_with_retry(self, item: _Item) -> bool:
        """Store one item, retrying until it is stored (True), or False for a segment whose
        file has gone from the spool."""
        key = object_key(self.prefix, item.name)
        delay = self.backoff_s
        while True:
            if item.path is not None and not item.path.exists():
                log.error("%s is no longer in the spool; it cannot be stored", item.path)
                return False
            try:
                size = await self._store(item, key)
            except Exception as exc:  # every failure is retried: the store's, the disk's, ours
                message = f"storing {key} failed: {getattr(exc, 'message', None) or exc}"
                if message != self.last_error:
                    log.warning("%s; retrying", message,
                                exc_info=not isinstance(exc, (CloudrecError, OSError)))
                self.last_error = message
                metrics.counters.upload_failures += 1
                self._notify(self.on_error, message)
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self.max_backoff_s)
                continue
            if self.last_error is not None:
                self.last_error = None
                self._notify(self.on_error, None)
            self.stored_files += 1
            self.stored_bytes += size
            metrics.counters.stored(item.name, size)
            self._notify(self.on_stored, item.name, size)
            return True

    async def _store(self, item: _Item, key: str) -> int:
        content_type = content_type_for(item.name)
        if item.path is not None:
            size = item.path.stat().st_size
            await self.store.put_file(key, item.path, content_type)
            item.path.unlink(missing_ok=True)
            return size
        assert item.data is not None
        tmp = self.spool_dir / f".upload-{item.name}"
        try:
            tmp.unlink(missing_ok=True)  # a fresh file: a local store may have linked the last
            tmp.write_bytes(item.data)
            await self.store.put_file(key, tmp, content_type)
        finally:
            tmp.unlink(missing_ok=True)
        return len(item.data)

