"""One mixed-stream recording: the rooms' encoded media → a composed HLS recording → the store.

Rooms: a template (or an audio-only mix without an input list) subscribes to the task's room
and lays out its publishers in join order, re-flowed whenever one joins or leaves; a custom
``input`` list subscribes to every room it names. ``updatemixrecord`` may change the rooms.

Pictures (``patchUrl``, background and watermark images) are fetched once per task with the
SSRF-guarded :func:`~cloudrec.fetch.fetch_bytes` (5 MB, 5 s). A picture that cannot be
fetched or read is left out (the patch falls back to black, the background to its colour, a
watermark is not drawn); the recording goes on, the warning is logged and listed under
``warnings`` in ``queryrecord``. A missing decoration is not worth losing a recording for.

Threads: decoding, composing and encoding run in one worker thread per recording, which owns
the :class:`~cloudrec.media.mixed.MixedHlsRecorder`; FFmpeg releases the GIL while it works,
so the event loop (API, WebRTC, other recordings) keeps going. The two sides only exchange
messages: the loop puts commands on a queue (``frame``, ``publishers``, ``unpublished``,
``update``, ``stop``), and the worker reports back with ``call_soon_threadsafe`` (a segment
closed, the recording started, a key frame wanted, the worker ended). A closed segment is
handed over synchronously (the worker waits until the loop queued its upload), so uploads keep
the order segment → playlist. Because nothing else is shared, the worker can later move to its
own process (the commands and reports become messages on a pipe, frames go through shared
memory or a socket) without changing either side's logic.

The recording stops on ``stop()`` (reason api), after ``idle_timeout_s`` with no media from
any input it uses (idle; error when it was resumed after a restart and no input came back),
or when the worker fails (error). Callback events and progress are those of a source recording.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from cloudrec.errors import RecordingError
from cloudrec.fetch import FetchError, fetch_bytes
from cloudrec.media import MixedHlsRecorder, SegmentInfo, picture_urls
from cloudrec.models.mixconfig import MixConfig
from cloudrec.recorder.base import Recording
from cloudrec.rooms import PublisherEvent, RoomHub, Subscription, SubscriptionClosed
from cloudrec.tasks import Status, StopReason

log = logging.getLogger(__name__)

Key = tuple[str, str]
HANDOFF_S = 10.0  # the longest the worker waits for the loop to take a closed segment
UPDATE_TIMEOUT_S = 10.0
MAX_BACKLOG = 3000  # commands queued for the worker (~10 s of 9 inputs) before frames are dropped
WATCH_S = 0.25


def mixed_kinds(recordtype: int, mixconfig: MixConfig) -> frozenset[str]:
    """The tracks of a mixed recording: what recordtype asks for and the output has."""
    wanted = {0: {"audio", "video"}, 1: {"video"}, 2: {"audio"}}[recordtype]
    out = mixconfig.output
    has = {k for k, present in (("audio", out.has_audio), ("video", out.has_video)) if present}
    return frozenset(wanted & has)


def mix_rooms(roomid: str, mixconfig: MixConfig) -> list[str]:
    """The rooms a mix takes media from: the inputs' rooms, or the task's room."""
    if mixconfig.inputs:
        return list(dict.fromkeys(i.roomid for i in mixconfig.inputs))
    return [roomid]


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
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.hub = hub
        self.mixconfig = mixconfig
        self.idle_timeout_s = idle_timeout_s
        self.segment_seconds = segment_seconds
        self.allow_private_urls = allow_private_urls
        self.encoder_threads = encoder_threads
        self.recorder: MixedHlsRecorder | None = None
        self.warnings: list[str] = []
        self.frames_dropped = 0  # dropped before the worker: it was too far behind
        self.last_media = time.monotonic()  # written by the worker when it takes a frame
        self._runner: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pictures: dict[str, bytes] = {}
        self._failed_urls: dict[str, str] = {}
        self._subs: dict[str, Subscription] = {}
        self._pumps: dict[str, asyncio.Task[None]] = {}
        self._commands: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._worker_done: asyncio.Future[None] | None = None
        self._updates: set[asyncio.Future[None]] = set()  # updates the worker has not applied
        self._worker_started = asyncio.Event()

    # -- control --------------------------------------------------------------------------------

    def start(self, *, resume: bool) -> None:
        self._loop = asyncio.get_running_loop()
        self._runner = self._loop.create_task(self._run(resume))

    async def update(self, mixconfig: MixConfig) -> None:
        """Apply a new layout/output from the next frame on (raises RecordingError 4016 when
        the worker refuses it, 4014 when the recording is no longer running)."""
        try:  # a recording still fetching its pictures at start: wait for its worker
            await asyncio.wait_for(self._worker_started.wait(), UPDATE_TIMEOUT_S)
        except TimeoutError as exc:
            raise RecordingError("the mixed recording is still starting", 4015) from exc
        if self._worker_done is None or self._worker_done.done() or self._stop_requested.is_set():
            raise RecordingError("the mixed recording is not running", 4014)
        await self._fetch_pictures(mixconfig)
        self._sync_rooms(mixconfig)
        assert self._loop is not None
        applied: asyncio.Future[None] = self._loop.create_future()
        self._updates.add(applied)
        self._commands.put(("update", mixconfig, dict(self._pictures), applied))
        try:
            await asyncio.wait_for(applied, UPDATE_TIMEOUT_S)
        except ValueError as exc:
            raise RecordingError(f"mixconfig.output: {exc}", 4016) from exc
        except TimeoutError as exc:
            raise RecordingError("the layout update was not applied in time", 4015) from exc
        finally:
            self._updates.discard(applied)
        self.mixconfig = mixconfig
        self._save_progress()

    # -- the loop side --------------------------------------------------------------------------

    async def _run(self, resume: bool) -> None:
        loop = asyncio.get_running_loop()
        self._worker_done = loop.create_future()
        try:
            self.tasks.set_status(self.task.recordid, Status.STARTING)
            await self._fetch_pictures(self.mixconfig)
            self.recorder = MixedHlsRecorder(
                self.spool_dir,
                self.basename,
                self.mixconfig,
                self.task.roomid,
                video="video" in self.kinds,
                audio="audio" in self.kinds,
                pictures=self._pictures,
                segment_seconds=self.segment_seconds,
                on_segment=self._segment_from_worker,
                request_keyframe=self._keyframe_from_worker,
                resume=resume,
                encoder_threads=self.encoder_threads,
            )
            if resume:
                self.uploader.submit_pending(self.recorder.playlist_path)
            self._sync_rooms(self.mixconfig)
            self._thread = threading.Thread(
                target=self._work, args=(self.recorder,), name=f"mix-{self.task.recordid}",
                daemon=True,
            )
            self._thread.start()
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
            if self._thread is not None:
                self._commands.put(("stop",))
                await asyncio.shield(self._worker_done)
            elif not self._worker_done.done():
                self._worker_done.set_result(None)
            await self._finish()

    async def _watch(self) -> None:
        while not self._stop_requested.is_set():
            assert self._worker_done is not None
            if self._worker_done.done():
                return
            if time.monotonic() - self.last_media > self.idle_timeout_s:
                log.info("mixed recording %s: no media for %.0f s, stopping",
                         self.task.recordid, self.idle_timeout_s)
                if self.stop_reason is None:
                    self.stop_reason = StopReason.IDLE
                    if self.resumed and not self._recording:
                        self.stop_reason = StopReason.ERROR
                        self.error = ("the service restarted during the recording and no input "
                                      f"returned within {self.idle_timeout_s:.0f} s")
                return
            try:
                await asyncio.wait_for(self._stop_requested.wait(), WATCH_S)
            except TimeoutError:
                pass

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

        A worker that cannot keep up must not make memory grow: past ``MAX_BACKLOG`` queued
        commands, frames are dropped here (events never are), and the input is told to resync
        on its next keyframe once the worker catches up."""
        put = self._commands.put
        behind: set[Key] = set()
        try:
            while True:
                item = await sub.get()
                if not isinstance(item, PublisherEvent):
                    key = (roomid, item[0])
                    if self._commands.qsize() > MAX_BACKLOG:
                        self.frames_dropped += 1
                        if key not in behind:
                            behind.add(key)
                            log.warning("mixed recording %s is behind; dropping frames",
                                        self.task.recordid)
                        continue
                    if key in behind:
                        behind.discard(key)
                        put(("resync", key))
                        self._request_keyframe(key)
                if isinstance(item, PublisherEvent):
                    if item.kind == "unpublished":
                        put(("unpublished", (roomid, item.uid)))
                    if roomid == self.task.roomid:
                        pubs = self.hub.publishers(self.task.appid, roomid)
                        put(("publishers", [p.uid for p in pubs],
                             [p.uid for p in pubs if "video" in p.kinds]))
                else:
                    put(("frame", (roomid, item[0]), item[1]))
        except SubscriptionClosed:
            pass

    def _request_keyframe(self, key: Key) -> None:
        sub = self._subs.get(key[0])
        if sub is not None:
            sub.request_keyframe(key[1])

    # -- the worker thread ----------------------------------------------------------------------

    def _work(self, rec: MixedHlsRecorder) -> None:
        """Owns ``rec``: takes commands, ticks the clock, reports back. Ends on "stop"."""
        error: BaseException | None = None
        commands = self._commands
        next_tick = time.monotonic()
        reported_start = False
        try:
            while True:
                now = time.monotonic()
                if now >= next_tick:
                    rec.tick(now)
                    if rec.started and not reported_start:
                        reported_start = True
                        self._report(self._started)
                    next_tick += rec.tick_interval
                    if next_tick < now:
                        next_tick = now + rec.tick_interval
                    continue
                try:
                    command = commands.get(timeout=next_tick - now)
                except queue.Empty:
                    continue
                if command[0] == "stop":
                    break
                self._apply(rec, command)
        except BaseException as exc:  # reported to the loop: the task ends with reason error
            log.exception("mixed recording %s: media worker failed", self.task.recordid)
            error = exc
        finally:
            try:
                rec.close()
            except Exception as exc:
                log.exception("closing mixed recording %s failed", self.task.recordid)
                error = error or exc
            self._report(self._on_worker_done, error)

    def _apply(self, rec: MixedHlsRecorder, command: tuple[Any, ...]) -> None:
        kind = command[0]
        if kind == "frame":
            if rec.push(command[1], command[2]):
                self.last_media = time.monotonic()
        elif kind == "publishers":
            rec.set_publishers(command[1], command[2])
        elif kind == "unpublished":
            rec.unpublished(command[1])
        elif kind == "resync":
            rec.resync(command[1])
        elif kind == "update":
            _, mixconfig, pictures, applied = command
            try:
                rec.update(mixconfig, pictures)
            except ValueError as exc:
                self._report(_settle, applied, exc)
            else:
                self._report(_settle, applied, None)

    def _report(self, callback: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    def _segment_from_worker(self, segment: SegmentInfo) -> None:
        """Runs in the worker: the loop queues the upload; the worker waits until it did."""
        done = threading.Event()

        def take() -> None:
            try:
                self._on_segment(segment)
            finally:
                done.set()

        self._report(take)
        done.wait(HANDOFF_S)

    def _keyframe_from_worker(self, key: Key) -> None:
        self._report(self._request_keyframe, key)

    # -- reports, on the loop -------------------------------------------------------------------

    def _on_worker_done(self, error: BaseException | None) -> None:
        if error is not None:
            self.error = self.error or f"{type(error).__name__}: {error}"
            self.stop_reason = StopReason.ERROR
            self._stop_requested.set()
        for applied in self._updates:
            _settle(applied, RecordingError("the mixed recording stopped", 4014))
        assert self._worker_done is not None
        if not self._worker_done.done():
            self._worker_done.set_result(None)

    # -- progress -------------------------------------------------------------------------------

    def _media_progress(self) -> dict[str, Any]:
        rec = self.recorder
        stats = rec.stats if rec else None
        return {
            "inputs": [f"{r}/{u}" for r, u in sorted(rec.wanted)] if rec else [],
            "framesskipped": stats.frames_skipped if stats else 0,
            "framesdropped": self.frames_dropped,
            "warnings": list(self.warnings),
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
