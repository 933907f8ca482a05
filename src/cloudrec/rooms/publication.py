"""A publication: whatever writes encoded frames into (room, uid), and its way back upstream.

A publisher of any kind (a WebRTC peer, a relay from the worker that owns the room, and the
like) gets a :class:`Publication` from :meth:`~cloudrec.rooms.hub.RoomHub.attach` and writes
into it; readers (recordings, relays) hold a :class:`~cloudrec.rooms.subscription.Subscription`
and never learn which kind of publisher fed them. What readers ask of a publisher (a keyframe)
goes back through its :class:`Upstream`.

Two ways in, both synchronous, on the event loop, one call per frame:

- :meth:`Publication.write` (or the per-kind :meth:`Publication.writer`) for frames received
  here: it detects keyframes, keeps the publication's :class:`~cloudrec.rooms.stats.
  PublicationStats`, asks upstream for a keyframe until the first video keyframe, builds the
  :class:`~cloudrec.mediatypes.EncodedFrame` once and hands it to every matching subscription;
  its ``wallclock`` comes from :meth:`Publication.set_sender_clock` (a WebRTC publisher's
  sender reports), None until then;
- :meth:`Publication.forward` for frames another hub already built (a relay): counted and
  handed on unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from cloudrec.media.codecs import keyframe_detector
from cloudrec.mediatypes import EncodedFrame
from cloudrec.rooms.stats import PublicationStats
from cloudrec.rooms.subscription import PublisherInfo, RoomKey, Subscription

__all__ = ["Publication", "Room", "Upstream", "Write"]

# (codec name, clock rate, data, unwrapped RTP timestamp) -> None: one kind's frames
Write = Callable[[str, int, bytes, int], None]

KEYFRAME_ASK_S = 0.5  # until the first video keyframe, ask again at most this often


class Upstream(Protocol):
    """The publisher's end, as the room sees it. Neither method may raise or block."""

    @property
    def state(self) -> str:
        """How the publisher's connection stands (``"connected"``, ``"new"``...), for
        operators."""
        ...

    def request_keyframe(self) -> None:
        """Ask the publisher for a video keyframe, fire and forget."""
        ...

    def close(self) -> None:
        """The publication ended in the room (unpublished, replaced, failed, hub closed):
        release what feeds it. Called once."""
        ...


@dataclass(eq=False)
class Room:
    publications: dict[str, Publication] = field(default_factory=dict)  # join order
    subscriptions: list[Subscription] = field(default_factory=list)


class Publication:
    """One uid's publication in one room: made by :meth:`RoomHub.attach`, ended by
    :meth:`RoomHub.detach` (then ``active`` is False and writes are ignored)."""

    def __init__(self, key: RoomKey, info: PublisherInfo, origin: str, upstream: Upstream,
                 room: Room | None) -> None:
        self.key = key
        self.info = info
        self.origin = origin  # "webrtc", "relay", ...
        self.upstream = upstream
        self.active = room is not None
        self.frames = 0
        self.last_arrival = 0.0
        self.stats = PublicationStats()
        self._room = room if room is not None else Room()
        self._writers: dict[str, Write] = {}
        self._wall0: dict[str, float | None] = {}  # kind: the sender's time of timestamp 0

    @property
    def uid(self) -> str:
        return self.info.uid

    @property
    def epoch(self) -> int:
        """The hub's epoch for this publication: unique per hub, frames carry it."""
        return self.info.epoch

    @property
    def relayed(self) -> bool:
        return self.info.relayed

    def request_keyframe(self) -> None:
        if self.active:
            self.upstream.request_keyframe()

    # -- frames in -----------------------------------------------------------------------------

    def write(self, kind: str, codec: str, clock_rate: int, data: bytes, timestamp: int) -> None:
        """One encoded frame received here (an H.264 access unit in Annex B, a VP8 frame, an
        Opus packet); ``timestamp`` unwrapped and counted from the publication's first frame."""
        self.writer(kind)(codec, clock_rate, data, timestamp)

    def writer(self, kind: str) -> Write:
        """:meth:`write` for one kind, without the lookup: what a receiver calls per frame."""
        write = self._writers.get(kind)
        if write is None:
            write = self._writers[kind] = self._make_writer(kind)
        return write

    def set_sender_clock(self, kind: str, wall0: float | None) -> None:
        """The publisher's wall-clock time (s since the epoch, its own clock) of ``kind``'s
        timestamp 0, from its RTCP sender reports; None: unknown (no report yet, or a new
        stream). Frames written from now carry ``wallclock = wall0 + timestamp / clock_rate``."""
        self._wall0[kind] = wall0

    def forward(self, frame: EncodedFrame) -> None:
        """A frame that another hub built (``frame.epoch`` must be this publication's)."""
        if not self.active:
            return
        self.frames += 1
        uid = self.info.uid
        for sub in self._room.subscriptions:
            if sub.uid is None or sub.uid == uid:
                sub.push_frame(uid, frame)

    def _make_writer(self, kind: str) -> Write:
        uid, epoch, monotonic, stats = self.info.uid, self.info.epoch, time.monotonic, self.stats
        subs, clocks = self._room.subscriptions, self._wall0
        name, keyframe = "", keyframe_detector("")
        # Until the first video keyframe, ask for one (at most every 0.5 s): frames lost before
        # the receiver was registered would otherwise leave subscribers waiting a whole GOP.
        need_key, asked_at = kind == "video", -1.0

        def write(codec: str, clock_rate: int, data: bytes, timestamp: int) -> None:
            nonlocal name, keyframe, need_key, asked_at
            if not self.active:
                return
            if codec != name:
                name = codec
                keyframe = keyframe_detector(name)
            now = monotonic()
            self.frames += 1
            self.last_arrival = now
            is_key = keyframe(data)
            stats.add(kind, name, data, is_key, now)
            if need_key:
                if is_key:
                    need_key = False
                elif now - asked_at > KEYFRAME_ASK_S:
                    asked_at = now
                    self.upstream.request_keyframe()
            if not subs:
                return
            wall0 = clocks.get(kind)
            frame = EncodedFrame(kind, name, data, timestamp, clock_rate, now,  # type: ignore[arg-type]
                                 is_key, epoch,
                                 None if wall0 is None else wall0 + timestamp / clock_rate)
            for sub in subs:
                if sub.uid is None or sub.uid == uid:
                    sub.push_frame(uid, frame)

        return write
