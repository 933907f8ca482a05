"""One ingress on the worker that owns its room: connect, publish, and retry until deleted.

A :class:`IngressRunner` loops: check the source's address (the SSRF guard, again at connect
time), connect (state ``connecting``, or ``retrying`` after a failure), and once the source
gives media attach its publisher to the room (``RoomHub.attach``, origin the source's kind) and
write every frame into it (state ``active``). When the source ends, stalls or fails, the
publisher leaves the room and the runner waits (1 s, doubling up to 30 s; back to 1 s after
the source gave media) before the next try, its state ``retrying`` with the reason. Each
connection is a new publication, with a new epoch: a recording of it goes on after
``#EXT-X-DISCONTINUITY``. A source that cannot be recorded (a codec not supported, an address
refused) is reported as ``error`` and tried again at the longest wait.

Every state change goes into the ingress store (what ``GET .../ingress/{id}`` answers), and
every few seconds the publisher's codecs and bitrate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from cloudrec.console.redact import redact_url
from cloudrec.ingest.base import ContainerClock
from cloudrec.ingress.guard import SourceRefused, check_source
from cloudrec.ingress.store import IngressStore
from cloudrec.media.codecs import UnsupportedCodec
from cloudrec.rooms import RoomHub
from cloudrec.rooms.publication import Publication

log = logging.getLogger(__name__)

FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
STEADY_S = 5.0  # a connection that gave media this long resets the backoff
STATS_S = 2.0


class _Upstream:
    """A pulled source cannot be asked for a key frame; closing the publication ends nothing
    (the runner ends the connection itself)."""

    state = "connected"

    def request_keyframe(self) -> None:
        pass

    def close(self) -> None:
        pass


class Publisher:
    """What a source uses to enter the room: :meth:`open` once its kinds are known, then
    :meth:`write` per frame. ``uid`` is the ingress's (a Janus mirror has one per publisher)."""

    def __init__(self, runner: IngressRunner, uid: str) -> None:
        self.runner = runner
        self.uid = uid
        self.pub: Publication | None = None
        self.source_codecs: dict[str, str] = {}
        self.clock: ContainerClock | None = None  # with one_timeline

    def open(self, kinds: frozenset[str], codecs: dict[str, str],
             source_codecs: dict[str, str] | None = None, upstream: Any = None,
             one_timeline: bool = False) -> None:
        """``one_timeline``: the frames' timestamps share one clock (a demuxed container's, not
        RTP's per-track origins): it becomes the publication's sender clock."""
        r = self.runner
        self.source_codecs = dict(source_codecs or codecs)
        self.pub = r.hub.attach(r.spec["appid"], r.spec["roomid"], self.uid, kinds=kinds,
                                codecs=dict(codecs), upstream=upstream or _Upstream(),
                                origin=r.kind)
        self.clock = ContainerClock(self.pub, kinds) if one_timeline else None
        r.publishers[self.uid] = self
        r.media_started()

    def write(self, frame: tuple[str, str, int, bytes, int]) -> None:
        """One frame; with ``one_timeline`` its timestamps become the publication's sender
        clock (:class:`~cloudrec.ingest.base.ContainerClock`)."""
        pub = self.pub
        if pub is not None:
            kind, codec, rate, data, ts = frame
            if self.clock is not None:
                self.clock.check(ts, rate, time.monotonic())
            pub.write(kind, codec, rate, data, ts)

    def close(self, reason: str) -> None:
        if self.pub is not None:
            self.runner.hub.detach(self.pub, reason)
            self.pub = None
        self.runner.publishers.pop(self.uid, None)

    def describe(self) -> dict[str, Any]:
        pub = self.pub
        stats = pub.stats.as_dict() if pub is not None else {}
        video, audio = stats.get("video") or {}, stats.get("audio") or {}
        return {"uid": self.uid, "kinds": sorted(pub.info.kinds) if pub is not None else [],
                "video_codec": video.get("codec"), "audio_codec": audio.get("codec"),
                "source_codecs": self.source_codecs,
                "kbps": round((video.get("kbps") or 0) + (audio.get("kbps") or 0), 1),
                "width": stats.get("width"), "height": stats.get("height"),
                "fps": video.get("fps")}


# A source: runs one connection until it ends (returns why) or fails (raises); ``stop`` says
# when to give up.
Source = Callable[["IngressRunner", threading.Event], Awaitable[str]]


class IngressRunner:
    def __init__(self, spec: dict[str, Any], hub: RoomHub, store: IngressStore, *,
                 allow_private: bool, source: Source) -> None:
        self.spec = spec
        self.id = str(spec["ingressid"])
        self.kind = str(spec["kind"])
        self.url = str(spec["url"])
        self.hub = hub
        self.store = store
        self.allow_private = allow_private
        self.source = source
        self.publishers: dict[str, Publisher] = {}
        self.state = "connecting"
        self.reconnects = 0
        self._active_at: float | None = None
        self._stop = threading.Event()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"ingress {self.id}")

    async def stop(self, reason: str = "deleted") -> None:
        """End it: its publishers leave the room. Its stored state is left as it is (a
        delete has set it; a shutdown leaves it for the restart to resume)."""
        self._stop.set()
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 10.0)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
        self._leave(reason)

    def publisher(self, uid: str | None = None) -> Publisher:
        return Publisher(self, uid or str(self.spec["uid"]))

    def media_started(self) -> None:
        if self.state != "active":
            self._active_at = asyncio.get_running_loop().time()
            self._report("active", None)

    def _report(self, state: str, error: str | None, reconnect: bool = False) -> None:
        self.state = state
        if self._stop.is_set():
            return
        try:
            self.store.set_state(self.id, state, error, reconnect=reconnect,
                                 publishers=[p.describe() for p in self.publishers.values()])
        except Exception:
            log.exception("ingress %s: its state could not be stored", self.id)

    def _leave(self, reason: str) -> None:
        for pub in list(self.publishers.values()):
            pub.close(reason)

    async def _stats(self) -> None:
        while True:
            await asyncio.sleep(STATS_S)
            if self.state == "active" and not self._stop.is_set():
                try:
                    self.store.set_publishers(
                        self.id, [p.describe() for p in self.publishers.values()])
                except Exception:
                    log.exception("ingress %s: its publishers could not be stored", self.id)

    async def _run(self) -> None:
        backoff = FIRST_BACKOFF_S
        stats = asyncio.get_running_loop().create_task(self._stats())
        first = True
        try:
            while not self._stop.is_set():
                if not first:
                    self.reconnects += 1
                self._active_at = None
                error_state = False
                try:
                    await check_source(self.url, allow_private=self.allow_private,
                                       at_connect=True)
                    reason = await self.source(self, self._stop)
                except SourceRefused as exc:
                    reason, error_state = str(exc), True
                except (UnsupportedCodec, NotImplementedError) as exc:
                    reason, error_state = str(exc), True
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - every failure is reported, then retried
                    reason = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
                reason = reason.replace(self.url, redact_url(self.url))
                self._leave(reason)
                if self._stop.is_set():
                    break
                first = False
                now = asyncio.get_running_loop().time()
                if self._active_at is not None and now - self._active_at >= STEADY_S:
                    backoff = FIRST_BACKOFF_S
                wait = MAX_BACKOFF_S if error_state else backoff
                log.warning("ingress %s (%s) %s: %s; next try in %.0f s", self.id, self.kind,
                            "refused" if error_state else "dropped", reason, wait)
                self._report("error" if error_state else "retrying", reason, reconnect=True)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
                backoff = min(backoff * 2, MAX_BACKOFF_S)
        finally:
            stats.cancel()
            self._leave("ingress stopped")
