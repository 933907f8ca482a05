"""What a reader holds: a subscription to a room's (or one uid's) encoded frames and presence.

Publications feed subscriptions synchronously from the event loop; a subscription is a bounded
queue that never blocks the publisher (see :class:`Subscription`). It knows its room only
through two callbacks (ask for a keyframe, say it closed), so this module imports nothing of
the hub.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, final

from cloudrec.mediatypes import EncodedFrame

__all__ = ["Item", "PublisherEvent", "PublisherInfo", "RoomKey", "Subscription",
           "SubscriptionClosed"]

RoomKey = tuple[int, str]


@dataclass(frozen=True)
class PublisherInfo:
    uid: str
    kinds: frozenset[str]
    video_codec: str | None
    audio_codec: str | None
    joined_at: float  # time.time() when the uid first joined (kept across replacements)
    epoch: int  # unique per publication; timestamps restart with it
    # True when the media comes over a relay from the worker that owns the room
    # (:mod:`cloudrec.relay`): subscribers see it like any other publication, but the room is
    # not owned here.
    relayed: bool = False
    # True when its frames carry capture times from the publisher's RTCP sender reports once
    # they come (a WebRTC publisher, here or relayed): a recording holds its first frames until
    # then (:mod:`cloudrec.rooms.capture_wait`).
    sender_clock: bool = False


@final  # consumers tell items apart with ``type(item) is PublisherEvent``
@dataclass(frozen=True)
class PublisherEvent:
    kind: Literal["published", "unpublished"]
    uid: str
    info: PublisherInfo | None


Item = tuple[str, EncodedFrame] | PublisherEvent


class SubscriptionClosed(Exception):
    """Raised by :meth:`Subscription.get` once the subscription (or the hub) is closed."""


class Subscription:
    """Encoded frames and presence events of one room (or one uid of it), in arrival order.

    On subscribing, a ``published`` event is queued for each matching publisher already present
    and a keyframe is requested from it. The queue is bounded (``maxsize`` frames): when full,
    the oldest video frame is dropped together with the queued frames of that uid that depend on
    it, and that uid's video resumes at its next keyframe (requested at once); audio is dropped
    only when no video is queued. Events are never dropped. ``dropped_video``/``dropped_audio``
    count the drops. One consumer task per subscription; a cancelled :meth:`get` loses nothing.
    """

    def __init__(self, key: RoomKey, uid: str | None, maxsize: int, relay: bool = True, *,
                 request_keyframe: Callable[[str], None],
                 on_close: Callable[[Subscription], None]) -> None:
        """``request_keyframe(uid)`` asks the room's publication of ``uid`` for a keyframe;
        ``on_close(subscription)`` takes it out of its room."""
        self._ask_keyframe = request_keyframe
        self._on_close = on_close
        self.key = key
        self.uid = uid
        self.relay = relay  # whether this subscription may make the hub ask for a relay
        self.maxsize = maxsize
        self._items: deque[Item] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._resync: set[str] = set()
        self._closed = False
        self.dropped_video = 0
        self.dropped_audio = 0

    @property
    def closed(self) -> bool:
        return self._closed

    def qsize(self) -> int:
        return len(self._items)

    async def get(self) -> Item:
        """The next ``(uid, frame)`` or :class:`PublisherEvent`; raises SubscriptionClosed."""
        while not self._items:
            if self._closed:
                raise SubscriptionClosed
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()

    def get_nowait(self) -> Item:
        """Like :meth:`get`; raises ``asyncio.QueueEmpty`` when nothing is queued."""
        if self._items:
            return self._items.popleft()
        if self._closed:
            raise SubscriptionClosed
        raise asyncio.QueueEmpty

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Item:
        try:
            return await self.get()
        except SubscriptionClosed:
            raise StopAsyncIteration from None

    def request_keyframe(self, uid: str) -> None:
        """Ask ``uid``'s video sender for a keyframe (RTCP PLI, or upstream over the relay for a
        relayed publication), fire and forget."""
        self._ask_keyframe(uid)

    def close(self) -> None:
        if self._closed:
            return
        self._items.clear()
        self.end()
        self._on_close(self)

    # -- fed by the room's publications (never by the reader) ----------------------------------

    def end(self) -> None:
        """End the subscription from the room's side (the hub closed): :meth:`get` raises
        :class:`SubscriptionClosed` once the queue is drained."""
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def push_event(self, event: PublisherEvent) -> None:
        if event.kind == "unpublished":
            self._resync.discard(event.uid)
        self._items.append(event)
        self._wake()

    def push_frame(self, uid: str, frame: EncodedFrame) -> None:
        # Hot path: called for every received frame, on the event loop.
        if len(self._items) >= self.maxsize:
            self._make_room()
        if self._resync and frame.kind == "video" and uid in self._resync:
            if not frame.keyframe:
                self.dropped_video += 1
                return
            self._resync.discard(uid)
        self._items.append((uid, frame))
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _make_room(self) -> None:
        items = self._items
        victim = -1
        uid = ""
        first_audio = -1
        for i, item in enumerate(items):
            if type(item) is tuple:
                if item[1].kind == "video":
                    victim, uid = i, item[0]
                    break
                if first_audio < 0:
                    first_audio = i
        if victim < 0:
            if first_audio >= 0:
                del items[first_audio]
                self.dropped_audio += 1
            return  # only events queued: let them through
        del items[victim]
        self.dropped_video += 1
        i = victim
        while i < len(items):  # the frames that depended on it, up to the next keyframe
            item = items[i]
            if type(item) is tuple and item[0] == uid and item[1].kind == "video":
                if item[1].keyframe:
                    return
                del items[i]
                self.dropped_video += 1
                continue
            i += 1
        self._resync.add(uid)
        self.request_keyframe(uid)
