"""Snapshots: a JPEG of a recording's video every ``interval`` seconds, ``{base}_{unixms}.jpg``.

Two sources, one file format:

- :class:`KeyframeSnapshots`, for a source recording, which never decodes its video: when a
  snapshot is due it asks the publisher for a key frame and decodes that one frame only, with
  a fresh decoder, in a small thread pool. The receive path (the event loop) only looks at each
  video frame's ``keyframe`` flag; the decode and the JPEG encode happen off it. Due times
  follow a fixed schedule (``first + k * interval``), so late key frames do not make the
  spacing drift.
- :class:`CanvasSnapshots`, for a mix: the canvas the mix composed anyway, taken in the mix's
  own process (or thread) on the mix's media clock.

A JPEG is written under a temporary name, fsynced and renamed, in the recording's spool
directory; ``on_snapshot`` then hands it to the uploader. A snapshot that cannot be made (an
undecodable frame, a full disk) is logged and skipped: the recording goes on.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import av

from cloudrec.media.codecs import h264
from cloudrec.media.hls import fsync_dir
from cloudrec.mediatypes import EncodedFrame

log = logging.getLogger(__name__)

JPEG_QUALITY = 85
KEYFRAME_RETRY_S = 1.0  # ask the publisher again when no key frame came within this
DECODE_THREADS = 2  # for every source recording of the process together

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="snapshot")
        return _pool


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """One JPEG written into the spool (picklable: a mix process reports it to the loop)."""

    name: str  # "{base}_{unixms}.jpg"
    path: Path
    size: int
    unixms: int


def snapshot_name(basename: str, unixms: int) -> str:
    return f"{basename}_{unixms}.jpg"


def write_jpeg(frame: av.VideoFrame, directory: Path, basename: str, unixms: int
               ) -> SnapshotInfo:
    """Encode ``frame`` as a JPEG and make it durable under its final name."""
    buffer = io.BytesIO()
    frame.to_image().save(buffer, format="JPEG", quality=JPEG_QUALITY)
    name = snapshot_name(basename, unixms)
    path = directory / name
    tmp = directory / f".{name}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(directory)
    return SnapshotInfo(name, path, len(buffer.getbuffer()), unixms)


def decode_keyframe(codec: str, data: bytes) -> av.VideoFrame | None:
    """The picture of one key frame (H.264 with its SPS/PPS in band, or VP8), or None."""
    # freed with the object; a video codec's context (the codec name is only known as a str)
    ctx = cast(av.VideoCodecContext, av.CodecContext.create(codec, "r"))
    try:
        frames = list(ctx.decode(av.Packet(data)))
        frames += list(ctx.decode(None))
    except av.FFmpegError:
        return None
    return frames[0] if frames else None


class KeyframeSnapshots:
    """Snapshots of one publisher's video, from key frames only (see the module docstring).

    ``push`` is called on the event loop for every frame the recording takes; ``on_snapshot``
    is called on the loop as well (through ``call_soon``) once a JPEG is in the spool."""

    def __init__(
        self,
        interval_s: float,
        directory: Path,
        basename: str,
        *,
        on_snapshot: Callable[[SnapshotInfo], None],
        request_keyframe: Callable[[], None],
        call_soon: Callable[..., object],
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.interval_s = interval_s
        self.directory = directory
        self.basename = basename
        self._on_snapshot = on_snapshot
        self._request_keyframe = request_keyframe
        self._call_soon = call_soon
        self._clock, self._wall = clock, wall
        self._due: float | None = None  # monotonic time the next snapshot is due
        self._asked_at: float | None = None
        self._params = h264.ParameterSetCache()
        self._busy = threading.Lock()
        self.taken = 0
        self.failed = 0

    def push(self, frame: EncodedFrame) -> None:
        if frame.kind != "video" or frame.codec not in ("h264", "vp8"):
            return
        now = frame.arrival
        if self._due is None:
            self._due = now  # the first snapshot: the recording's first key frame
        if now < self._due:
            return
        key = frame.keyframe
        data = frame.data
        if frame.codec == "h264" and key:
            data, key = self._params.take(data)
        if not key:
            if self._asked_at is None or self._clock() - self._asked_at >= KEYFRAME_RETRY_S:
                self._asked_at = self._clock()
                self._request_keyframe()
            return
        self._asked_at = None
        self._due += self.interval_s
        if self._due <= now:  # more than an interval late (no video for a while): restart
            self._due = now + self.interval_s
        if not self._busy.acquire(blocking=False):
            return  # the previous one is still being made: skip this one
        unixms = round((self._wall() - (self._clock() - frame.arrival)) * 1000)
        _executor().submit(self._make, frame.codec, data, unixms)

    def _make(self, codec: str, data: bytes, unixms: int) -> None:
        """In a pool thread. ``on_snapshot`` is scheduled before the job counts as done, so
        whoever :meth:`wait` ed for it finds it queued on the loop."""
        try:
            picture = decode_keyframe(codec, data)
            if picture is None:
                self.failed += 1
                log.warning("snapshot of %s: the key frame did not decode", self.basename)
                return
            info = write_jpeg(picture, self.directory, self.basename, unixms)
            self.taken += 1
            try:
                self._call_soon(self._on_snapshot, info)
            except RuntimeError:  # the loop is closed: the spool keeps the file for a restart
                pass
        except Exception as exc:  # a full disk, a closed spool: skip this one
            self.failed += 1
            log.error("snapshot of %s failed: %s", self.basename, exc)
        finally:
            self._busy.release()

    def wait(self, timeout: float = 5.0) -> None:
        """Block until the snapshot being made (if any) is written."""
        if self._busy.acquire(timeout=timeout):
            self._busy.release()


class CanvasSnapshots:
    """Snapshots of a mix's canvas on the mix's media clock; runs where the mix runs."""

    def __init__(
        self,
        interval_s: float,
        directory: Path,
        basename: str,
        on_snapshot: Callable[[SnapshotInfo], None],
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.interval_s = interval_s
        self.directory = directory
        self.basename = basename
        self._on_snapshot = on_snapshot
        self._wall = wall
        self._due: float | None = None  # media seconds

    def offer(self, canvas: av.VideoFrame, media_s: float, pictured: bool = True) -> None:
        """A composed frame at ``media_s`` seconds of the mix; kept when a snapshot is due.

        The first one waits for a frame that shows an input's picture (``pictured``): the
        mix's clock starts with the first media, often audio or a frame still being decoded,
        and a thumbnail of an empty canvas says nothing. It waits one interval at most."""
        if self._due is None and not pictured and media_s < self.interval_s:
            return
        if self._due is not None and media_s < self._due:
            return
        self._due = media_s + self.interval_s if self._due is None else self._due + self.interval_s
        if self._due <= media_s:
            self._due = media_s + self.interval_s
        try:
            info = write_jpeg(canvas, self.directory, self.basename, round(self._wall() * 1000))
        except Exception as exc:
            log.error("snapshot of %s failed: %s", self.basename, exc)
            return
        self._on_snapshot(info)
