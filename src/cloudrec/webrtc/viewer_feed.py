"""What feeds a WHEP viewer's senders: tracks of encoded packets, a clock that keeps rising
across a publisher's reconnect, rate-limited keyframe requests, and the AAC → Opus transcoder
the viewers of one publication share.

Nothing here decodes video. On the lean send path (the default) a frame from the room
(:class:`~cloudrec.mediatypes.EncodedFrame`) becomes its RTP payloads once, in
:class:`PayloadCache`, which every viewer of the publication shares, and each viewer's
:class:`~cloudrec.rtp.sender.LeanSender` sends them with its own headers. On the aiortc send
path frames become ``av.Packet`` objects that aiortc's sender packetises as they are, per
viewer (:mod:`cloudrec.webrtc._aiortc_sender`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from fractions import Fraction

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from cloudrec.media.aac_opus import OPUS_RATE, AacToOpus
from cloudrec.mediatypes import EncodedFrame
from cloudrec.rooms.hub import RoomHub
from cloudrec.rooms.subscription import PublisherEvent, RoomKey, Subscription
from cloudrec.rtp.packetize import packetize
from cloudrec.webrtc._aiortc_sender import encoded_packet

__all__ = ["AacFeeds", "KeyframeLimiter", "PacketTrack", "PayloadCache", "RisingClock"]

logger = logging.getLogger(__name__)

MAX_QUEUED = 300  # packets a track holds for its sender before it starts over at a keyframe
KEYFRAME_INTERVAL_S = 0.5  # at most one keyframe request per publication this often


class PacketTrack(MediaStreamTrack):
    """A track whose ``recv()`` yields pre-encoded ``av.Packet`` objects, in order."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self._packets: deque[av.Packet] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.overflows = 0

    def put(self, data: bytes, pts: int, time_base: Fraction) -> bool:
        """Queue one encoded frame; False when the queue was full and was emptied (the
        sender is behind: video must start again at a keyframe)."""
        full = len(self._packets) >= MAX_QUEUED
        if full:
            self._packets.clear()
            self.overflows += 1
        self._packets.append(encoded_packet(data, pts, time_base))
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        return not full

    async def recv(self) -> av.Packet:
        while not self._packets:
            if self.readyState != "live":
                raise MediaStreamError
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._packets.popleft()

    def stop(self) -> None:
        super().stop()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class PayloadCache:
    """The RTP payloads of the last few video frames, by frame: a publication writes one
    :class:`~cloudrec.mediatypes.EncodedFrame` object to all its subscriptions, so each of its
    viewers finds the payloads the first one built (the frame is held with its payloads, so
    its ``id`` is not reused while it is here)."""

    def __init__(self, size: int = 32) -> None:
        self.size = size
        self._entries: OrderedDict[int, tuple[EncodedFrame, list[bytes]]] = OrderedDict()
        self.built = 0

    def payloads(self, frame: EncodedFrame) -> list[bytes]:
        if frame.kind != "video":
            return [frame.data]  # audio: one packet per frame, as it is
        entry = self._entries.get(id(frame))
        if entry is not None and entry[0] is frame:
            return entry[1]
        payloads = packetize(frame.codec, frame.data)
        self.built += 1
        self._entries[id(frame)] = (frame, payloads)
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return payloads


class RisingClock:
    """One kind's timestamps for a viewer: a publication's own timeline, moved so that it
    continues the previous publication's (a reconnect restarts timestamps at 0) with the gap
    that passed between their frames' arrivals."""

    def __init__(self, clock_rate: int) -> None:
        self.clock_rate = clock_rate
        self.time_base = Fraction(1, clock_rate)
        self._epoch = -1
        self._offset = 0
        self._last = 0
        self._last_arrival = 0.0

    def map(self, timestamp: int, epoch: int, arrival: float) -> int:
        if epoch != self._epoch:
            if self._epoch < 0:
                self._offset = -timestamp
            else:
                gap = max(1, round((arrival - self._last_arrival) * self.clock_rate))
                self._offset = self._last + gap - timestamp
            self._epoch = epoch
        out = timestamp + self._offset
        if out <= self._last and self._last:  # never step back within a publication either
            out = self._last + 1
        self._last, self._last_arrival = out, arrival
        return out


class KeyframeLimiter:
    """Keyframe requests of many viewers to one publication: at most one per ``interval_s``;
    a request within it is not lost but sent when the interval ends (once for all)."""

    def __init__(self, interval_s: float = KEYFRAME_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._last: dict[tuple[RoomKey, str], float] = {}
        self._pending: dict[tuple[RoomKey, str], asyncio.TimerHandle] = {}
        self.sent = 0

    def ask(self, sub: Subscription, uid: str) -> None:
        key = (sub.key, uid)
        if key in self._pending:
            return
        now = time.monotonic()
        wait = self._last.get(key, -1e9) + self.interval_s - now
        if wait <= 0:
            self._send(key, sub, uid)
        else:
            self._pending[key] = asyncio.get_running_loop().call_later(
                wait, self._send, key, sub, uid)

    def _send(self, key: tuple[RoomKey, str], sub: Subscription, uid: str) -> None:
        self._pending.pop(key, None)
        self._last[key] = time.monotonic()
        self.sent += 1
        if not sub.closed:
            sub.request_keyframe(uid)

    def forget(self, key: RoomKey, uid: str) -> None:
        """No viewer of ``uid`` is left: drop its state."""
        self._last.pop((key, uid), None)
        handle = self._pending.pop((key, uid), None)
        if handle is not None:
            handle.cancel()


OpusListener = Callable[[EncodedFrame], None]


class _AacFeed:
    """One publication's AAC, transcoded once, handed to every listener as Opus frames."""

    def __init__(self, hub: RoomHub, key: RoomKey, uid: str) -> None:
        self.listeners: list[OpusListener] = []
        self.sub = hub.subscribe(*key, uid, relay=False)
        self._uid = uid
        self._coder: AacToOpus | None = None
        self._epoch = -1
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        async for item in self.sub:
            if isinstance(item, PublisherEvent):
                continue
            frame = item[1]
            if frame.kind != "audio" or frame.codec != "aac":
                continue
            if frame.epoch != self._epoch or self._coder is None:
                self._epoch, self._coder = frame.epoch, AacToOpus()
            for data, timestamp in self._coder.push(frame.data, frame.timestamp,
                                                    frame.clock_rate):
                opus = EncodedFrame("audio", "opus", data, timestamp, OPUS_RATE, frame.arrival,
                                    True, frame.epoch)
                for listener in list(self.listeners):
                    try:
                        listener(opus)
                    except Exception:
                        logger.exception("an Opus listener of %s/%s uid=%s failed",
                                         *self.sub.key, self._uid)

    def close(self) -> None:
        self.task.cancel()
        self.sub.close()


class AacFeeds:
    """The shared AAC → Opus transcoders, one per ``(room, uid)`` that has listeners."""

    def __init__(self, hub: RoomHub) -> None:
        self.hub = hub
        self._feeds: dict[tuple[RoomKey, str], _AacFeed] = {}

    def __len__(self) -> int:
        return len(self._feeds)

    def listen(self, key: RoomKey, uid: str, listener: OpusListener) -> None:
        feed = self._feeds.get((key, uid))
        if feed is None:
            feed = self._feeds[(key, uid)] = _AacFeed(self.hub, key, uid)
            logger.info("AAC to Opus for the viewers of %s/%s uid=%s", *key, uid)
        if listener not in feed.listeners:
            feed.listeners.append(listener)

    def unlisten(self, key: RoomKey, uid: str, listener: OpusListener) -> None:
        feed = self._feeds.get((key, uid))
        if feed is None:
            return
        if listener in feed.listeners:
            feed.listeners.remove(listener)
        if not feed.listeners:
            del self._feeds[(key, uid)]
            feed.close()

    def close(self) -> None:
        for feed in self._feeds.values():
            feed.close()
        self._feeds.clear()
