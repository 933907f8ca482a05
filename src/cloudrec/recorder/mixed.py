"""One mixed-stream recording: the rooms' encoded media → a composed HLS recording → the store.

Rooms: a template (or an audio-only mix without an input list) subscribes to the task's room
and lays out its publishers in join order, re-flowed whenever one joins or leaves; a custom
``input`` list subscribes to every room it names. ``updatemixrecord`` may change the rooms.

Pictures (``patchUrl``, background and watermark images) are fetched once per task with the
SSRF-guarded :func:`~cloudrec.fetch.fetch_bytes` (5 MB, 5 s). A picture that cannot be
fetched or read is left out (the patch falls back to black, the background to its colour, a
watermark is not drawn); the recording goes on, the warning is logged and listed under
``warnings`` in ``queryrecord``. A missing decoration is not worth losing a recording for.

Where the media runs: decoding, composing and encoding run in the mix's own child process by
default (:class:`~cloudrec.recorder.mixproc.MixProcess`), or, with
``CLOUDREC_MIX_WORKER=thread``, in a worker thread of this process
(:class:`~cloudrec.recorder.mixproc.MixThread`). The child owns the
:class:`~cloudrec.media.mix.recorder.MixedHlsRecorder` and writes the HLS files into the spool
dir; this side keeps the rooms, the uploads, the task and the API. The two only exchange
messages (see :mod:`cloudrec.media.mix.worker`): frames in batches (``FLUSH_S``: one write per
batch, not one per frame), presence and updates in; started, closed segments, key-frame
requests, counters and warnings out. A closed segment is handed over synchronously (the worker
waits until the loop queued its upload), so uploads keep the order segment → playlist.

Backpressure: the loop counts the frames it sent and the worker reports how many it took after
each batch. Past ``MAX_BACKLOG`` frames in between, frames are dropped before the worker
(``framesdropped``), and the input resyncs on a key frame once the worker caught up.

A child that dies (a crash, SIGKILL, out of memory) ends the recording with reason ``error``
and ``recording.failed``; the segments it closed stay and are stored, and the playlist is
ended with ``#EXT-X-ENDLIST`` here. The API and other recordings go on.

Pause (``pauserecord``): frames are dropped here, before the worker, which composes and
writes nothing until ``resumerecord`` (see :mod:`cloudrec.tasks.pause`). Live push
(``outputs.pushurl``): the worker also pushes its encoded packets, through a small process
per URL (:mod:`cloudrec.media.push.fanout`); ``queryrecord`` lists each push's state under ``push``
(URLs redacted) and a push that is failing under ``warnings``.

The recording stops on ``stop()`` (reason api), after ``idle_timeout_s`` with no media from
any input it uses (idle; error when it was resumed after a restart and no input came back),
or when the worker fails (error). Callback events and progress are those of a source recording.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cloudrec.errors import RecordingError
from cloudrec.fetch import FetchError, fetch_bytes
from cloudrec.media.hls import HlsPlaylist, SegmentInfo
from cloudrec.media.mix.overlay import picture_urls
from cloudrec.media.mix.worker import Message, MixSpec, Progress, pack_frame
from cloudrec.media.push.fanout import push_warnings
from cloudrec.models.mixconfig import MixConfig
from cloudrec.models.rules import mix_rooms
from cloudrec.recorder.base import Recording
from cloudrec.recorder.mixproc import MixProcess, MixThread
from cloudrec.recorder.outputs import outputs_of
from cloudrec.rooms import PublisherEvent, RoomHub, Subscription, SubscriptionClosed
from cloudrec.tasks import Status, StopReason

log = logging.getLogger(__name__)

Key = tuple[str, str]
UPDATE_TIMEOUT_S = 10.0
MAX_BACKLOG = 3000  # frames sent but not taken by the worker (~10 s of 9 inputs) before dropping
WATCH_S = 0.25
FLUSH_S = 0.02  # frames wait at most this long to go to the worker in one batch
STOP_GRACE_S = 10.0  # a stopping worker's time to finish its files before it is killed
MIX_WORKER = os.environ.get("CLOUDREC_MIX_WORKER", "process")  # "process" or "thread"


class MixMedia:
    """What the loop knows of the worker's files: the spool's playlist, the segments reported
    closed, and the latest counters (the ``HlsMedia`` that ``Recording`` reads)."""

    def __init__(self, playlist_path: Path, segments: list[SegmentInfo],
                 send: Callable[[Message], None]) -> None:
        self.playlist_path = playlist_path
        self.segments = segments
        self.progress = Progress()
        self._send = send

    def merge_segments(self, returned: list[SegmentInfo]) -> list[SegmentInfo]:
        """Segments a node that came back stored for this mix: the worker lists them in its
        playlist in their place (stored with the next playlist upload); returns those added."""
        listed = {s.name for s in self.segments}
        added = [s for s in returned if s.name not in listed]
        if added:
            self.segments[:] = sorted([*self.segments, *added], key=lambda s: s.index)
            self._send(("merge", added))
        return added

    @property
    def duration(self) -> float:
        return max(self.progress.duration, sum(s.duration for s in self.segments))


class MixedRecording(Recording):
    def __init__(
        self,
        *args: Any,
        hub: RoomHub,
        mixconfig: MixConfig,
        idle_timeout_s: float,
        segment_seconds: float,
        allow_private_urls: bool = False,
        encoder_threads: int | None = None,
        mix_worker: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.hub = hub
        self.mixconfig = mixconfig
        self.idle_timeout_s = idle_timeout_s
        self.segment_seconds = segment_seconds
        self.allow_private_urls = allow_private_urls
        self.encoder_threads = encoder_threads
        self.mix_worker = mix_worker or MIX_WORKER
        if self.mix_worker not in ("process", "thread"):
            raise ValueError(f"mix worker {self.mix_worker!r}: 'process' or 'thread'")
        self.recorder: MixMedia | None = None
        self.worker: MixProcess | MixThread | None = None
        self.warnings: list[str] = []
        self.frames_dropped = 0  # dropped before the worker: it was too far behind
        self.last_media = time.monotonic()
        self._runner: asyncio.Task[None] | None = None
        self._pictures: dict[str, bytes] = {}
        self._failed_urls: dict[str, str] = {}
        self._subs: dict[str, Subscription] = {}
        self._pumps: dict[str, asyncio.Task[None]] = {}
        self._batch: list[tuple[Any, ...]] = []
        self._flush_at: asyncio.TimerHandle | None = None
        self._sent = 0  # frames sent to the worker
        self._taken = 0  # frames the worker reported taken
        self._updates: dict[int, asyncio.Future[None]] = {}  # updates the worker has not applied
        self._tokens = itertools.count()
        self._worker_started = asyncio.Event()
        self._worker_error: str | None = None
        self._stopping = False  # the loop asked the worker to stop

    # -- control --------------------------------------------------------------------------------

    def start(self, *, resume: bool) -> None:
        self._runner = asyncio.get_running_loop().create_task(self._run(resume))

    async def update(self, mixconfig: MixConfig) -> None:
        """Apply a new layout/output from the next frame on (raises RecordingError 4016 when
        the worker refuses it, 4014 when the recording is no longer running)."""
        try:  # a recording still fetching its pictures at start: wait for its worker
            async with asyncio.timeout(UPDATE_TIMEOUT_S):
                await self._worker_started.wait()
        except TimeoutError as exc:
            raise RecordingError("the mixed recording is still starting", 4015) from exc
        worker = self.worker
        if worker is None or worker.done.done() or self._stop_requested.is_set():
            raise RecordingError("the mixed recording is not running", 4014)
        await self._fetch_pictures(mixconfig)
        self._sync_rooms(mixconfig)
        applied: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        token = next(self._tokens)
        self._updates[token] = applied
        self._send(("update", mixconfig, dict(self._pictures), token))
        try:
            await asyncio.wait_for(applied, UPDATE_TIMEOUT_S)
        except ValueError as exc:
            raise RecordingError(f"mixconfig.output: {exc}", 4016) from exc
        except TimeoutError as exc:
            raise RecordingError("the layout update was not applied in time", 4015) from exc
        finally:
            self._updates.pop(token, None)
        self.mixconfig = mixconfig
        self._save_progress()

    # -- the loop side --------------------------------------------------------------------------

    async def _run(self, resume: bool) -> None:
        try:
            self.tasks.set_status(self.task.recordid, Status.STARTING)
            await self._fetch_pictures(self.mixconfig)
            spec = MixSpec(
                self.spool_dir, self.basename, self.mixconfig, self.task.roomid,
                video="video" in self.kinds, audio="audio" in self.kinds,
                pictures=dict(self._pictures), segment_seconds=self.segment_seconds,
                resume=resume, encoder_threads=self.encoder_threads,
                snapshot_interval=self.outputs.snapshot_interval)
            transport = MixProcess if self.mix_worker == "process" else MixThread
            worker = transport(spec, self._on_report)
            segments = await worker.open()
            self.worker = worker
            worker.done.add_done_callback(self._on_worker_done)
            self.recorder = MixMedia(self.spool_dir / f"{self.basename}.m3u8", segments,
                                     self._send)
            if resume:
                self.uploader.submit_pending(self.recorder.playlist_path)
            if self.pause_state.paused:  # paused before a restart (or while starting)
                self._send(("pause",))
            push = outputs_of(self.task.request).get("pushurl")
            if push:
                self._send(("push", list(push)))
            self._sync_rooms(self.mixconfig)
            self._worker_started.set()
            await self._watch()
        except Exception as exc:  # media or storage failure: end the task with reason error
            log.exception("mixed recording %s failed", self.task.recordid)
            self.error = self.error or f"{type(exc).__name__}: {exc}"
            self.stop_reason = StopReason.ERROR
        finally:
            self._worker_started.set()  # an update waiting for it finds the recording ended
            for roomid in list(self._subs):
                self._unsubscribe(roomid)
            if self.worker is not None:
                self._flush()
                self._stopping = True
                await self.worker.stop(STOP_GRACE_S)
            await self._finish()

    async def _watch(self) -> None:
        while not self._stop_requested.is_set():
            assert self.worker is not None and self.recorder is not None
            if self.worker.done.done():
                return
            if self.pause_state.paused:  # no idle stop while paused: pause_timeout_s instead
                self.last_media = time.monotonic()
                if self._pause_expired():
                    return
            # the worker's clock is time.monotonic() too: CLOCK_MONOTONIC is system-wide
            last_media = max(self.last_media, self.recorder.progress.last_media)
            if time.monotonic() - last_media > self.idle_timeout_s:
                log.info("mixed recording %s: no media for %.0f s, stopping",
                         self.task.recordid, self.idle_timeout_s)
                if self.stop_reason is None:
                    self.stop_reason = StopReason.IDLE
                    if self.resumed and not self._recording:
                        self.stop_reason = StopReason.ERROR
                        self.error = ("the service restarted during the recording and no input "
                                      f"returned within {self.idle_timeout_s:.0f} s")
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(WATCH_S):
                    await self._stop_requested.wait()
    async def _fetch_pictures(self, mixconfig: MixConfig) -> None:
        urls = [u for u in picture_urls(mixconfig)
                if u not in self._pictures and u not in self._failed_urls]

        async def one(url: str) -> None:
            try:
                self._pictures[url] = await fetch_bytes(
                    url, what="picture", allow_private=self.allow_private_urls)
            except FetchError as exc:
                self._failed_urls[url] = exc.message
                note = f"picture {url} left out: {exc.message}"
                self.warnings.append(note)
                log.warning("mixed recording %s: %s", self.task.recordid, note)

        await asyncio.gather(*(one(u) for u in urls))

    def _sync_rooms(self, mixconfig: MixConfig) -> None:
        rooms = mix_rooms(self.task.roomid, mixconfig)
        for roomid in set(self._subs) - set(rooms):
            self._unsubscribe(roomid)
        for roomid in rooms:
            if roomid not in self._subs:
                sub = self.hub.subscribe(self.task.appid, roomid)
                self._subs[roomid] = sub
                self._pumps[roomid] = asyncio.get_running_loop().create_task(
                    self._pump(roomid, sub))

    def _unsubscribe(self, roomid: str) -> None:
        sub = self._subs.pop(roomid, None)
        if sub is not None:
            sub.close()
        pump = self._pumps.pop(roomid, None)
        if pump is not None:
            pump.cancel()

    async def _pump(self, roomid: str, sub: Subscription) -> None:
        """Hand a room's frames and presence to the worker (it decides what the mix uses).

        A worker that cannot keep up must not make memory grow: past ``MAX_BACKLOG`` frames
        sent and not yet taken, frames are dropped here (events never are), and the input is
        told to resync on its next keyframe once the worker catches up."""
        behind: set[Key] = set()
        try:
            while True:
                item = await sub.get()
                if isinstance(item, PublisherEvent):
                    if item.kind == "unpublished":
                        self._send(("unpublished", (roomid, item.uid)))
                    if roomid == self.task.roomid:
                        pubs = self.hub.publishers(self.task.appid, roomid)
                        self._send(("publishers", [p.uid for p in pubs],
                                    [p.uid for p in pubs if "video" in p.kinds]))
                    continue
                key = (roomid, item[0])
                if self.pause_state.paused:
                    continue  # nothing is written while paused; the worker resyncs on resume
                if self._backlog() > MAX_BACKLOG:
                    self.frames_dropped += 1
                    if key not in behind:
                        behind.add(key)
                        log.warning("mixed recording %s is behind; dropping frames",
                                    self.task.recordid)
                    continue
                if key in behind:
                    behind.discard(key)
                    self._send(("resync", key))
                    self._request_keyframe(key)
                self._batch.append(pack_frame(key, item[1]))
                self._sent += 1
                if self._flush_at is None:
                    self._flush_at = asyncio.get_running_loop().call_later(FLUSH_S, self._flush)
        except SubscriptionClosed:
            pass

    def _backlog(self) -> int:
        return self._sent - self._taken

    def _flush(self) -> None:
        """Send the frames batched so far, in one message."""
        if self._flush_at is not None:
            self._flush_at.cancel()
            self._flush_at = None
        if self._batch and self.worker is not None:
            batch, self._batch = self._batch, []
            self.worker.send(("frames", batch))

    def _send(self, command: Message) -> None:
        """A command, after the frames batched before it (the worker sees them in order)."""
        self._flush()
        if self.worker is not None:
            self.worker.send(command)

    def _request_keyframe(self, key: Key) -> None:
        sub = self._subs.get(key[0])
        if sub is not None:
            sub.request_keyframe(key[1])

    # -- reports, on the loop -------------------------------------------------------------------

    def _on_report(self, message: Message) -> None:
        kind = message[0]
        if kind == "taken":
            self._taken = max(self._taken, message[1])
        elif kind == "progress":
            if self.recorder is not None:
                self.recorder.progress = message[1]
        elif kind == "segment":
            try:
                if self.recorder is not None:
                    self.recorder.segments.append(message[1])
                    self._on_segment(message[1])
            finally:
                if self.worker is not None:
                    self.worker.take_segment()
        elif kind == "started":
            self._started()
        elif kind == "snapshot":
            self.outputs.add_snapshot(message[1])
        elif kind == "keyframe":
            self._request_keyframe(message[1])
        elif kind == "updated":
            applied = self._updates.get(message[1])
            if applied is not None:
                _settle(applied, None if message[2] is None else ValueError(message[2]))

    def _on_worker_done(self, done: asyncio.Future[str | None]) -> None:
        error = done.result()
        if error is None and not self._stopping:
            error = "the mix worker ended before the recording was stopped"
        if error is not None:
            self._worker_error = error
            log.error("mixed recording %s: %s", self.task.recordid, error)
            self.error = self.error or error
            self.stop_reason = StopReason.ERROR
            self._stop_requested.set()
        for applied in self._updates.values():
            _settle(applied, RecordingError("the mixed recording stopped", 4014))

    def _pause_media(self) -> None:
        self._send(("pause",))  # after the frames batched before it

    def _resume_media(self) -> None:
        self._send(("resume",))

    def _close_media(self) -> None:
        """After a worker that did not finish its files: store the segments it closed (some
        may not have been reported) and end the spool's playlist with #EXT-X-ENDLIST."""
        if self._worker_error is None or self.recorder is None:
            return
        playlist = HlsPlaylist(self.recorder.playlist_path, self.segment_seconds)
        on_disk = playlist.load()
        known = {s.name for s in self.recorder.segments}
        for segment in on_disk:
            if segment.name not in known and segment.path.exists():
                self.recorder.segments.append(segment)
                self.uploader.submit_segment(segment.path)
        playlist.write(on_disk, ended=True)

    # -- progress -------------------------------------------------------------------------------

    def _media_progress(self) -> dict[str, Any]:
        rec = self.recorder
        return {
            "inputs": [f"{r}/{u}" for r, u in rec.progress.wanted] if rec else [],
            "framesskipped": rec.progress.frames_skipped if rec else 0,
            "framesdropped": self.frames_dropped,
            "warnings": [*self.warnings, *push_warnings(rec.progress.push if rec else [])],
            "push": list(rec.progress.push) if rec else [],  # outputs.pushurl, redacted
            # the layout in force, so a restart resumes with the latest updatemixrecord
            "mixconfig": self.mixconfig.model_dump(mode="json", by_alias=True,
                                                   exclude_none=True),
        }

    def _summary(self) -> dict[str, Any]:
        summary = self.progress()
        summary.pop("mixconfig", None)
        return summary


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
