"""Push publishers on the worker: an RTMP or SRT byte stream from the front becomes a publisher of
the room (``origin="rtmp"`` or ``"srt"``), like any other.

The front terminates the protocol and sends the stream over a link (:meth:`~cloudrec.workers.
client.WorkerClient.ingest_stream`): ``"flv"`` is parsed here on the event loop
(:class:`~cloudrec.ingest.flv.FlvReader`: cheap, no library); ``"mpegts"`` is demuxed by PyAV in
a thread of its own (:func:`~cloudrec.ingest.demux.demux_frames` over a bounded
:class:`~cloudrec.ingest.demux.ByteFeed`), which hands its frames to the loop in batches (what
one feed's worth of bytes gave, at most :data:`BATCH_FRAMES`). Every frame goes through a
:class:`~cloudrec.media.normalize.PublicationNormalizer`: H.264, AAC and Opus pass untouched,
other codecs become H.264 / AAC-LC (in the demux thread for MPEG-TS, in a worker thread for
FLV), so readers never see anything else.

Attaching: the publication enters the room once its first video keyframe and first audio frame
have been seen, or :data:`ATTACH_WAIT_S` after its first frame with the kinds that came by then
(at most :data:`MAX_PENDING` frames wait). A kind that appears only later is dropped (logged
once): a room's publication announces its kinds once. A second publish of the same uid
replaces the first, as WHIP's does.

Ending: the link closing ends the publication (``unpublished``); the publication ending in the
room (replaced, hub closed) stops reading the link, which the front sees close and drops the
publisher. Garbage, a codec that cannot be decoded (``codec X not supported``) or a codec that
changes midway end it with the reason, which goes back to the front (an RTMP publisher is told
it). Memory is bounded: the feed, the frames in flight from the demux thread, the pending frames
before attaching, and each FLV tag.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from ..media.codecs import UnsupportedCodec
from ..media.normalize import PASS_AUDIO, PASS_VIDEO, PublicationNormalizer
from ..mediatypes import EncodedFrame
from ..metrics import counters
from ..rooms import RoomHub
from ..rooms.publication import Publication
from .base import ContainerClock
from .demux import ByteFeed, demux_frames
from .flv import FlvReader

logger = logging.getLogger(__name__)
__all__ = ["PushIngest"]

FORMATS = ("flv", "mpegts")
ATTACH_WAIT_S = 1.0
MAX_PENDING = 512  # frames held before the publication attaches
MAX_IN_FLIGHT = 256  # frames from a demux thread waiting for the event loop
BATCH_FRAMES = 32  # a demux thread hands its frames over in batches of at most this many
RECONNECT_S = 60.0  # a publish of a uid that ended this recently counts as a reconnect


class PushIngest:
    """A worker's push publishers (one :meth:`run` per link)."""

    def __init__(self, hub: RoomHub) -> None:
        self.hub = hub
        self.sessions: set[_PushSession] = set()
        self._ended_at: dict[tuple[int, str, str], float] = {}

    async def run(self, appid: int, roomid: str, uid: str, transport: str, fmt: str,
                  chunks: AsyncIterator[bytes]) -> str:
        """Publishes the stream until it ends; why it ended."""
        if fmt not in FORMATS:
            raise ValueError(f"stream format {fmt!r} is not one of {FORMATS}")
        key = (appid, roomid, uid)
        now = time.monotonic()
        live = any((s.appid, s.roomid, s.uid) == key for s in self.sessions)
        if live or now - self._ended_at.get(key, -RECONNECT_S) < RECONNECT_S:
            counters.ingest_reconnects[transport] = counters.ingest_reconnects.get(
                transport, 0) + 1
        counters.ingests_started[transport] = counters.ingests_started.get(transport, 0) + 1
        session = _PushSession(self.hub, appid, roomid, uid, transport)
        self.sessions.add(session)
        active = counters.ingests_active
        active[transport] = active.get(transport, 0) + 1
        try:
            return await session.run(fmt, chunks)
        finally:
            active[transport] -= 1
            self.sessions.discard(session)
            self._ended_at[key] = time.monotonic()
            if len(self._ended_at) > 4096:
                cutoff = time.monotonic() - RECONNECT_S
                self._ended_at = {k: t for k, t in self._ended_at.items() if t > cutoff}

    async def close(self) -> None:
        for session in list(self.sessions):
            session.stop("server closed")


class _PushSession:
    """One link's publication; its :class:`~cloudrec.rooms.publication.Upstream` too."""

    def __init__(self, hub: RoomHub, appid: int, roomid: str, uid: str, transport: str) -> None:
        self.hub, self.appid, self.roomid, self.uid = hub, appid, roomid, uid
        self.transport = transport
        self.normalizer = PublicationNormalizer()
        self.pub: Publication | None = None
        self.kinds: frozenset[str] = frozenset()
        self.pending: list[EncodedFrame] = []
        self.clock: ContainerClock | None = None  # the container's timeline, once attached
        self.first_at = 0.0
        self.dropped: set[str] = set()
        self.reason: str | None = None  # why it stops, once decided
        self._stopped = asyncio.Event()
        self._loop = asyncio.get_running_loop()

    # -- Upstream -------------------------------------------------------------------------------

    @property
    def state(self) -> str:
        return "connected" if self.reason is None else "closed"

    def request_keyframe(self) -> None:
        """A pushed stream cannot be asked: its encoder's GOP decides."""

    def close(self) -> None:
        self.stop("replaced or ended in the room")

    def stop(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        self._loop.call_soon_threadsafe(self._stopped.set)

    # -- the stream -----------------------------------------------------------------------------

    async def run(self, fmt: str, chunks: AsyncIterator[bytes]) -> str:
        who = f"{self.transport} {self.appid}/{self.roomid}/{self.uid}"
        chunks = _link(chunks)
        reader = asyncio.ensure_future(self._flv(chunks) if fmt == "flv"
                                       else self._mpegts(chunks))
        stopped = asyncio.ensure_future(self._stopped.wait())
        try:
            await asyncio.wait({reader, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not reader.done():
                reader.cancel()
            try:
                await reader
                reason = self.reason or "unpublished"
            except asyncio.CancelledError:
                if self.reason is None:
                    raise
                reason = self.reason
            await self._flush()
        except _LinkClosed:
            reason = "the link from the front closed"
        except UnsupportedCodec as exc:
            reason = str(exc)
            logger.warning("%s refused: %s", who, reason)
        except Exception as exc:  # noqa: BLE001 - the publisher's bytes may fail in any way
            reason = f"stream error: {exc}" if isinstance(exc, ValueError) or _is_av(exc) else (
                f"internal error: {exc!r}")
            if reason.startswith("internal"):
                logger.exception("%s failed", who)
            else:
                logger.warning("%s ended: %s", who, reason)
        finally:
            stopped.cancel()
            if not reader.done():
                reader.cancel()
            self.stop(self.reason or "ended")
        if self.pub is not None:
            self.hub.detach(self.pub, reason)
        logger.info("%s left: %s", who, reason)
        return reason

    async def _flv(self, chunks: AsyncIterator[bytes]) -> None:
        reader = FlvReader(0)
        async for chunk in chunks:
            for frame in reader.feed(chunk):
                if frame.codec in (PASS_VIDEO if frame.kind == "video" else PASS_AUDIO):
                    outs = self.normalizer.push(frame)
                else:  # decoding and encoding: off the event loop
                    outs = await asyncio.to_thread(self.normalizer.push, frame)
                for out in outs:
                    self._write(out)

    async def _mpegts(self, chunks: AsyncIterator[bytes]) -> None:
        done = self._loop.create_future()
        in_flight = threading.Semaphore(MAX_IN_FLIGHT)
        batch: list[EncodedFrame] = []  # the demux thread's frames not yet handed over

        def written(frames: list[EncodedFrame]) -> None:
            in_flight.release(len(frames))
            for frame in frames:
                self._write(frame)

        def hand_over() -> None:  # the demux thread: one loop wake per batch of frames
            if batch:
                self._loop.call_soon_threadsafe(written, batch.copy())
                batch.clear()

        def deliver(frame: EncodedFrame) -> bool:  # the demux thread
            for out in self.normalizer.push(frame):
                if not in_flight.acquire(blocking=False):
                    hand_over()
                    while not in_flight.acquire(timeout=0.5):
                        if self.reason is not None:
                            return False
                batch.append(out)
                if len(batch) >= BATCH_FRAMES:
                    hand_over()
            return self.reason is None

        feed = ByteFeed(on_wait=hand_over)

        def work() -> None:
            try:
                demux_frames(feed, 0, deliver)
                hand_over()
                self._loop.call_soon_threadsafe(_settle, done, None)
            except BaseException as exc:  # noqa: BLE001 - reported on the loop
                hand_over()
                self._loop.call_soon_threadsafe(_settle, done, exc)

        threading.Thread(target=work, name=f"demux-{self.uid}"[:15], daemon=True).start()
        try:
            async for chunk in chunks:
                if done.done():
                    break
                await feed.put(chunk)
        finally:
            feed.close()
        await asyncio.shield(done)

    async def _flush(self) -> None:
        try:
            outs = await asyncio.to_thread(self.normalizer.flush)
        except Exception:  # noqa: BLE001 - the end of a stream that failed: nothing to add
            return
        for out in outs:
            self._write(out)

    # -- into the room --------------------------------------------------------------------------

    def _write(self, frame: EncodedFrame) -> None:
        pub = self.pub
        if pub is None:
            if not self.pending:
                self.first_at = time.monotonic()
            self.pending.append(frame)
            kinds = {f.kind for f in self.pending}
            keyed = any(f.kind == "video" and f.keyframe for f in self.pending)
            if not ((keyed and "audio" in kinds) or len(self.pending) >= MAX_PENDING
                    or time.monotonic() - self.first_at >= ATTACH_WAIT_S):
                return
            pub = self._attach()
            pending, self.pending = self.pending, []
            self.clock = ContainerClock(pub, self.kinds)
            for f in pending:
                self.clock.check(f.timestamp, f.clock_rate, f.arrival)
                pub.write(f.kind, f.codec, f.clock_rate, f.data, f.timestamp)
            return
        if frame.kind not in self.kinds:
            if frame.kind not in self.dropped:
                self.dropped.add(frame.kind)
                logger.info("%s %s/%s/%s: %s began after the publication, dropped",
                            self.transport, self.appid, self.roomid, self.uid, frame.kind)
            return
        if self.clock is not None:
            self.clock.check(frame.timestamp, frame.clock_rate, frame.arrival)
        pub.writer(frame.kind)(frame.codec, frame.clock_rate, frame.data, frame.timestamp)

    def _attach(self) -> Publication:
        codecs: dict[str, str | None] = {}
        for f in self.pending:
            codecs.setdefault(f.kind, f.codec)
        self.kinds = frozenset(codecs)
        self.pub = self.hub.attach(self.appid, self.roomid, self.uid, kinds=self.kinds,
                                   codecs=codecs, upstream=self, origin=self.transport)
        if not self.pub.active:
            self.stop("the room is closed")
        return self.pub


class _LinkClosed(Exception):
    """The stream from the front broke off (its process or node went away)."""


async def _link(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    try:
        async for chunk in chunks:
            yield chunk
    except Exception as exc:
        raise _LinkClosed(str(exc)) from exc


def _settle(future: asyncio.Future[Any], exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is None:
        future.set_result(None)
    else:
        future.set_exception(exc)


def _is_av(exc: BaseException) -> bool:
    return type(exc).__module__.split(".")[0] == "av"
