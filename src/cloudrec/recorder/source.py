"""One source-stream recording: a uid's encoded media → HLS in the spool → the task's store.

The loop pulls ``(uid, EncodedFrame)`` from the room's subscription and pushes them into
``SourceHlsRecorder`` (remux for H.264, Opus → AAC). Each closed segment goes to the
``SpoolUploader``, then the playlist that lists it. The loop ends on ``stop()`` (reason api),
after ``idle_timeout_s`` without media (reason idle) or on an error (reason error); the
last segment and the playlist with ``#EXT-X-ENDLIST`` are then stored before the task is
marked stopped (see :class:`~cloudrec.recorder.base.Recording`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from cloudrec.media.source import SourceHlsRecorder
from cloudrec.mediatypes import EncodedFrame
from cloudrec.recorder.base import Recording, basename_for, prefix_for
from cloudrec.recorder.outputs import outputs_of
from cloudrec.rooms import PublisherEvent, RoomHub, Subscription, SubscriptionClosed
from cloudrec.rooms.capture_wait import CaptureTimeWait
from cloudrec.tasks import Status, StopReason

__all__ = ["SourceRecording", "basename_for", "prefix_for"]

log = logging.getLogger(__name__)

BATCH_S = 0.05  # how often the recording loop drains its subscription
STOP_CATCH_UP_S = 0.5  # a stop waits at most this long for the audio of the last pictures


class SourceRecording(Recording):
    def __init__(
        self,
        *args: Any,
        hub: RoomHub,
        idle_timeout_s: float,
        segment_seconds: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.hub = hub
        self.idle_timeout_s = idle_timeout_s
        self.segment_seconds = segment_seconds
        self.recorder: SourceHlsRecorder | None = None
        self._runner: asyncio.Task[None] | None = None
        self._subscription: Subscription | None = None
        self._wait: CaptureTimeWait[str] = CaptureTimeWait()  # a new publication's first frames

    # -- control --------------------------------------------------------------------------------

    def start(self, *, resume: bool) -> None:
        self._runner = asyncio.get_running_loop().create_task(self._run(resume))

    # -- the loop -------------------------------------------------------------------------------

    async def _run(self, resume: bool) -> None:
        sub = self._subscription = self.hub.subscribe(
            self.task.appid, self.task.roomid, self.task.uid)
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
                audio_codec=str(outputs_of(self.task.request).get("audiocodec") or "aac"),
            )
            if resume:
                self.uploader.submit_pending(self.recorder.playlist_path)
            self._set_status(Status.STARTING)
            sub.request_keyframe(uid)
            await self._pump(sub)
        except SubscriptionClosed:
            pass  # stop() closed it
        except Exception as exc:  # media failure, a full disk: end the task with reason error
            log.exception("recording %s failed", self.task.recordid)
            self._fail(exc)
        finally:
            sub.close()
            await self._finish()

    async def _pump(self, sub: Subscription) -> None:
        """Drain the subscription in batches: one wake-up per ``BATCH_S`` instead of one per
        frame keeps the per-frame cost of the loop near zero (recording needs no low latency)."""
        last_media = time.monotonic()
        while not self._stop_requested.is_set():
            paused = self.pause_state.paused
            if self._take(sub, paused=paused):
                last_media = time.monotonic()
            if paused:  # no auto-stop for lack of media while paused; pause_timeout_s instead
                last_media = time.monotonic()
                if self._pause_expired():
                    return
            if time.monotonic() - last_media > self.idle_timeout_s:
                log.info("recording %s: no media for %.0f s, stopping",
                         self.task.recordid, self.idle_timeout_s)
                if self.stop_reason is None:
                    self.stop_reason = StopReason.IDLE
                    if self.resumed and not self._recording:
                        # Resumed after a crash or restart, and the publisher never came back.
                        self.stop_reason = StopReason.ERROR
                        self.error = (
                            "the service restarted during the recording and the publisher did "
                            f"not return within {self.idle_timeout_s:.0f} s")
                return
            await asyncio.sleep(BATCH_S)
        await self._catch_up(sub)

    async def _catch_up(self, sub: Subscription) -> None:
        """Stopped: write what was queued before the stop, then, for at most
        ``STOP_CATCH_UP_S``, the audio that catches up with the last pictures (later pictures
        are after the stop: dropped)."""
        paused = self.pause_state.paused
        self._take(sub, paused=paused)
        deadline = time.monotonic() + STOP_CATCH_UP_S
        recorder = self.recorder
        while (recorder is not None and recorder.audio_behind and not paused
               and time.monotonic() < deadline):
            await asyncio.sleep(BATCH_S)
            self._take(sub, paused=False, audio_only=True)

    def _take(self, sub: Subscription, *, paused: bool, audio_only: bool = False) -> bool:
        """Push what the subscription holds (nothing is written while paused); whether it
        held media."""
        media = False
        while True:
            try:
                item = sub.get_nowait()
            except asyncio.QueueEmpty:
                return media
            if type(item) is PublisherEvent:  # a publication begins or ends
                wait = self._wait
                held = (wait.published(item.uid, item.info)
                        if item.kind == "published" and item.info is not None
                        else wait.release(item.uid))
                for frame in [] if paused else held:
                    self._push(frame)
                continue
            media = True
            if paused or (audio_only and item[1].kind != "audio"):
                continue
            for frame in self._wait.push(item[0], item[1]):
                self._push(frame)

    def _push(self, frame: EncodedFrame) -> None:
        assert self.recorder is not None
        self.recorder.push(frame)
        self.outputs.on_frame(frame, self._subscription)  # snapshots: key frames only
        if not self._recording and self.recorder.duration > 0:
            self._started()

    def _push_held(self) -> None:
        """Write what new publications' waits for capture times still hold, as it is."""
        for _, frame in self._wait.release_all():
            self._push(frame)

    def _pause_media(self) -> None:
        if self.recorder is None:
            return
        try:
            if self._subscription is not None:  # what came before the pause is recorded
                self._take(self._subscription, paused=False)
            self._push_held()  # captured before the pause
            self.recorder.pause(time.monotonic())
        except Exception as exc:  # closing the segment failed (a full disk): end with error
            log.exception("recording %s: pausing failed", self.task.recordid)
            self._fail(exc)
            self._stop_requested.set()
            self._on_stop_requested()

    def _resume_media(self) -> None:
        if self.recorder is not None:
            self.recorder.resume(time.monotonic())
        if self._subscription is not None:
            self._subscription.request_keyframe(self.task.uid or "")

    def _close_media(self) -> None:
        if self.recorder is not None:
            self._push_held()
            self.recorder.close()

    def _media_progress(self) -> dict[str, Any]:
        # a resumed recording that failed before its media opened ends with the spool's
        # playlist in its place (Recording._finish): no recorder stats then
        recorder: object = self.recorder
        transcoded = isinstance(recorder, SourceHlsRecorder) and recorder.stats.video_transcoded
        return {"videotranscoded": transcoded}
