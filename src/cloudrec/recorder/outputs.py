"""What a recording makes beyond its HLS (startrecord's ``outputs``), and its file list.

:class:`RecordingOutputs` belongs to one :class:`~cloudrec.recorder.base.Recording`. It is told
of each closed segment, each stored file and, for a source recording, each frame; it makes the
snapshots and, when the recording stops, the MP4, and hands both to the recording's
``SpoolUploader``: they are spooled, retried and stored exactly like the segments, so a storage
outage delays them and never loses them.

MP4 sources. The uploader deletes a segment from the spool once it is stored, yet the MP4 is
made from every segment when the recording stops. With ``mp4`` asked for, each closed segment is
therefore hard-linked into ``{spool}/mp4/`` first (no copy, no extra space while the spool file
exists; with a local store the stored object is that same inode). The MP4 reads a segment from
there, else from the spool, else fetches it back from the store (``ObjectStore.get_bytes``,
one segment at a time into a temporary file): a task resumed on another node, or a segment
linked nowhere, still ends up in the MP4. The links go once the MP4 is in the spool.

The MP4 is made in a thread when the recording stops (after the last segment and the final
playlist are queued, before the recording waits for its files to be stored). A full disk is
retried with backoff for a while; any other failure is logged, and the recording ends without
an MP4 (``warnings`` says why). A task that was killed while stopping is resumed and makes its
MP4 when it stops again; a stopped task whose MP4 was in the spool but not yet stored has it
stored by :func:`submit_leftovers` after a restart.

File list. ``files()`` lists the playlist, every segment, the MP4 and the snapshots, each with
its object key (``name``), ``kind``, ``size``, ``duration`` (playlist, segments, MP4) and
``stored``. A segment is stored once the uploader said so, or, for one listed by a resumed
playlist, when it is no longer in the spool. What a restart would forget is journalled in
``{spool}/.files`` (one JSON line per snapshot written and per file stored, no fsync: a lost
line only costs a size in the list), so a resumed task still lists the snapshots taken before
the restart and the sizes of the segments stored before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloudrec.diskfull import is_disk_full
from cloudrec.media.hls import SegmentInfo
from cloudrec.media.mp4 import Mp4Error, Mp4Info, Mp4Source, remux_to_mp4
from cloudrec.media.snapshot import KeyframeSnapshots, SnapshotInfo
from cloudrec.mediatypes import EncodedFrame

if TYPE_CHECKING:
    from cloudrec.recorder.base import Recording
    from cloudrec.rooms import Subscription
    from cloudrec.storage import SpoolUploader

log = logging.getLogger(__name__)

MP4_DIR = "mp4"  # {spool}/mp4/: links of the segments the MP4 is made from
JOURNAL = ".files"
FETCH_TIMEOUT_S = 120.0  # fetching one segment back from the store
MP4_RETRY_S = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0)  # pauses between tries on a full disk


def outputs_of(request: dict[str, Any]) -> dict[str, Any]:
    """The request's ``outputs`` as stored with the task ({} when there is none)."""
    return dict(request.get("outputs") or {})


class RecordingOutputs:
    def __init__(self, recording: Recording) -> None:
        self._rec = recording
        wanted = outputs_of(recording.task.request)
        self.mp4 = bool(wanted.get("mp4"))
        interval = wanted.get("snapshotinterval")
        self.snapshot_interval: int | None = int(interval) if interval else None
        self.spool_dir: Path = recording.spool_dir
        self.mp4_name = f"{recording.basename}.mp4"
        self.mp4_info: Mp4Info | None = None
        self.warnings: list[str] = []
        self._stored: dict[str, int] = {}  # names the uploader stored → size
        self._playlist_fresh = False  # the latest playlist is stored
        self._snapshots: dict[str, SnapshotInfo] = {}
        self._keyframes: KeyframeSnapshots | None = None
        self._finished = False
        self.fetched = 0  # segments the MP4 fetched back from the store
        if recording.resumed:
            self._resume()

    @property
    def uploader(self) -> SpoolUploader:
        return self._rec.uploader

    @property
    def mp4_dir(self) -> Path:
        return self.spool_dir / MP4_DIR

    # -- events of the recording ----------------------------------------------------------------

    def on_segment(self, segment: SegmentInfo) -> None:
        """A segment closed (before its upload is queued): keep a link for the MP4."""
        self._playlist_fresh = False
        if self.mp4:
            if segment.init is not None:
                self._keep(segment.init)
            self._keep(segment.name)

    def on_frame(self, frame: EncodedFrame, subscription: Subscription | None) -> None:
        """A source recording's frame, on the event loop: snapshots look at key frames."""
        if self.snapshot_interval is None or frame.kind != "video" or self._finished:
            return
        if self._keyframes is None:
            uid = self._rec.task.uid or ""
            loop = asyncio.get_running_loop()
            self._keyframes = KeyframeSnapshots(
                self.snapshot_interval, self.spool_dir, self._rec.basename,
                on_snapshot=self.add_snapshot,
                request_keyframe=lambda: subscription.request_keyframe(uid) if subscription
                else None,
                call_soon=loop.call_soon_threadsafe)
        self._keyframes.push(frame)

    def add_snapshot(self, info: SnapshotInfo) -> None:
        """A JPEG is in the spool: journal it, queue its upload."""
        self._snapshots[info.name] = info
        self._journal({"snapshot": info.name, "size": info.size, "unixms": info.unixms})
        self.uploader.submit_segment(info.path)  # any spooled file: stored, then removed

    def on_stored(self, name: str, size: int) -> str | None:
        """The uploader stored ``name``; returns its kind when it is one of ours."""
        self._stored[name] = size
        if name.endswith(".m3u8"):
            self._playlist_fresh = True
            return None
        self._journal({"stored": name, "size": size})
        if name == self.mp4_name:
            return "mp4"
        if name in self._snapshots:
            return "snapshot"
        return None

    # -- the end of the recording ---------------------------------------------------------------

    async def finish(self, segments: list[SegmentInfo]) -> None:
        """After the last files were queued: the snapshot being made, then the MP4."""
        self._finished = True
        self._playlist_fresh = False  # the final playlist is on its way
        if self._keyframes is not None:
            await asyncio.to_thread(self._keyframes.wait)
            await asyncio.sleep(0)  # its on_snapshot, scheduled on this loop
        if self.mp4:
            await self._make_mp4(list(segments))

    async def _make_mp4(self, segments: list[SegmentInfo]) -> None:
        recordid = self._rec.task.recordid
        if not segments:
            self._warn("no MP4: the recording has no segment")
            return
        for name in (s.name for s in segments):
            self._keep(name)
        for name in {s.init for s in segments if s.init is not None}:
            self._keep(name)
        sources = [Mp4Source(s.name, s.discontinuity, s.init) for s in segments]
        opener = self._opener(asyncio.get_running_loop())
        dest = self.spool_dir / self.mp4_name
        kinds = tuple(self._rec.kinds)
        started = time.monotonic()
        for attempt in range(len(MP4_RETRY_S) + 1):
            try:
                first = first_frame_ms(segments)
                info = await asyncio.to_thread(
                    remux_to_mp4, sources, dest, opener, kinds=kinds,
                    creation_time=None if first is None else first / 1000)
                break
            except Exception as exc:
                if is_disk_full(exc) and attempt < len(MP4_RETRY_S):
                    log.error("recording %s: making the MP4 failed (%s); retrying",
                              recordid, exc)
                    await asyncio.sleep(MP4_RETRY_S[attempt])
                    continue
                if not isinstance(exc, (Mp4Error, OSError)):
                    log.exception("recording %s: making the MP4 failed", recordid)
                self._warn(f"no MP4: {type(exc).__name__}: {exc}")
                return
        self.mp4_info = info
        if info.skipped:
            self._warn(f"MP4 without {len(info.skipped)} segment(s) that could not be read: "
                       + ", ".join(info.skipped[:5]))
        log.info("recording %s: MP4 of %d segments (%d fetched back from the store), %.1f s, "
                 "%d bytes, made in %.1f s", recordid, info.segments, self.fetched,
                 info.duration, info.size, time.monotonic() - started)
        self.uploader.submit_segment(info.path)
        shutil.rmtree(self.mp4_dir, ignore_errors=True)

    def _opener(self, loop: asyncio.AbstractEventLoop) -> Any:
        """How the MP4 thread opens a segment: the link, the spool file, or the store."""
        store = self.uploader.store
        prefix = self._rec.prefix
        mp4_dir, spool_dir = self.mp4_dir, self.spool_dir

        @contextlib.contextmanager
        def open_segment(name: str) -> Iterator[Path | None]:
            for path in (mp4_dir / name, spool_dir / name):
                if path.exists():
                    yield path
                    return
            fetched = mp4_dir / f".fetch-{name}"
            try:
                future = asyncio.run_coroutine_threadsafe(store.get_bytes(prefix + name), loop)
                data = future.result(FETCH_TIMEOUT_S)
            except Exception as exc:
                log.error("fetching segment %s back from the store failed: %s", name, exc)
                data = None
            if data is None:
                yield None
                return
            mp4_dir.mkdir(parents=True, exist_ok=True)
            fetched.write_bytes(data)
            del data
            self.fetched += 1
            try:
                yield fetched
            finally:
                fetched.unlink(missing_ok=True)

        return open_segment

    def _keep(self, name: str) -> None:
        """Hard-link a spooled segment into ``mp4/`` (copy where links are not allowed)."""
        src, dest = self.spool_dir / name, self.mp4_dir / name
        if dest.exists() or not src.exists():
            return
        try:
            self.mp4_dir.mkdir(exist_ok=True)
            try:
                os.link(src, dest)
            except FileNotFoundError:
                return  # stored and removed meanwhile: the MP4 fetches it back
            except OSError:
                shutil.copyfile(src, dest)
        except OSError as exc:
            log.error("recording %s: keeping segment %s for the MP4 failed: %s",
                      self._rec.task.recordid, name, exc)

    def _journal(self, entry: dict[str, Any]) -> None:
        try:
            with open(self.spool_dir / JOURNAL, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")
        except OSError as exc:  # a full disk: the list may lack a size after a restart
            log.warning("recording %s: journalling %s failed: %s", self._rec.task.recordid,
                        entry, exc)

    def _warn(self, text: str) -> None:
        log.warning("recording %s: %s", self._rec.task.recordid, text)
        self.warnings.append(text)

    # -- a resumed task -------------------------------------------------------------------------

    def _resume(self) -> None:
        """After a restart: a stale MP4 goes (a new one is made at the end); snapshots taken
        before are listed again and those still in the spool are queued."""
        for stale in (self.spool_dir / self.mp4_name,
                      self.spool_dir / f"{self.mp4_name}.part"):
            stale.unlink(missing_ok=True)
        snapshots, stored = read_journal(self.spool_dir)
        self._stored.update(stored)
        for info in snapshots:
            self._snapshots[info.name] = info
            if info.path.exists():
                self.uploader.submit_segment(info.path)
            else:
                self._stored.setdefault(info.name, info.size)

    # -- the file list --------------------------------------------------------------------------

    def files(self) -> list[dict[str, Any]]:
        """The recording's files: playlist, segments, MP4, snapshots (module docstring)."""
        rec = self._rec
        prefix = rec.prefix
        media = rec.recorder
        segments = list(media.segments) if media is not None else []
        out: list[dict[str, Any]] = []
        playlist = f"{rec.basename}.m3u8"
        if media is not None or playlist in self._stored:
            try:
                size = (self.spool_dir / playlist).stat().st_size
            except OSError:
                size = self._stored.get(playlist, 0)
            out.append({"name": prefix + playlist, "kind": "playlist", "size": size,
                        "duration": round(sum(s.duration for s in segments), 3),
                        "firstframetime": first_frame_ms(segments),
                        "stored": self._playlist_fresh and all(
                            self._segment_stored(s) for s in segments)})
        inits = list(dict.fromkeys(s.init for s in segments if s.init is not None))
        for name in inits:  # fMP4: the initialisation sections the segments need
            out.append({"name": prefix + name, "kind": "init",
                        "size": self._init_size(name), "stored": name in self._stored})
        for s in segments:
            out.append({"name": prefix + s.name, "kind": "segment",
                        "size": s.size or self._stored.get(s.name, 0),
                        "duration": round(s.duration, 3), "stored": self._segment_stored(s),
                        "firstframetime": first_frame_ms([s])})
        if self.mp4_info is not None:
            out.append({"name": prefix + self.mp4_name, "kind": "mp4",
                        "size": self.mp4_info.size, "duration": round(self.mp4_info.duration, 3),
                        "stored": self.mp4_name in self._stored})
        for info in sorted(self._snapshots.values(), key=lambda i: i.unixms):
            out.append({"name": prefix + info.name, "kind": "snapshot", "size": info.size,
                        "stored": info.name in self._stored})
        return out

    def _init_size(self, name: str) -> int:
        try:
            return (self.spool_dir / name).stat().st_size
        except OSError:
            return self._stored.get(name, 0)

    def _segment_stored(self, segment: SegmentInfo) -> bool:
        if segment.name in self._stored:
            return True
        return not (self.spool_dir / segment.name).exists()


def first_frame_ms(segments: list[SegmentInfo]) -> int | None:
    """The wall-clock time (ms since the epoch) of the first frame of ``segments``, where the
    playlist knows it (``#EXT-X-PROGRAM-DATE-TIME``)."""
    for seg in segments:
        if seg.date is not None:
            return round(seg.date * 1000)
    return None


def read_journal(spool_dir: Path) -> tuple[list[SnapshotInfo], dict[str, int]]:
    """The snapshots a spool's journal lists, and the files it says were stored (name →
    size). A torn last line is ignored."""
    try:
        lines = (spool_dir / JOURNAL).read_text(encoding="utf-8").splitlines()
    except OSError:
        return [], {}
    snapshots: list[SnapshotInfo] = []
    stored: dict[str, int] = {}
    for line in lines:
        try:
            item = json.loads(line)
            if "snapshot" in item:
                name = str(item["snapshot"])
                snapshots.append(SnapshotInfo(name, spool_dir / name, int(item["size"]),
                                              int(item["unixms"])))
            else:
                stored[str(item["stored"])] = int(item["size"])
        except (ValueError, KeyError, TypeError):
            continue
    return snapshots, stored


def submit_leftovers(uploader: SpoolUploader) -> int:
    """A stopped task's snapshots and MP4 still in its spool (after a restart): queue them,
    snapshots first. Returns how many."""
    spool_dir = uploader.spool_dir
    files = sorted(p for p in spool_dir.glob("*.jpg") if not p.name.startswith("."))
    files += sorted(p for p in spool_dir.glob("*.mp4") if not p.name.startswith("."))
    for path in files:
        uploader.submit_segment(path)
    return len(files)
