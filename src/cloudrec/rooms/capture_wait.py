"""A reader's wait for a new publication's capture times (the recordings' "sender clock wait").

A WebRTC publisher's frames carry their capture time (``EncodedFrame.wallclock``) only from its
first RTCP sender report on, which comes 0.5–1.5 s after its first frame from aiortc, up to
several seconds for a browser's audio, and with the first packet from FFmpeg. A recording that
placed the frames before it by their arrival put a publisher's first second out of sync by as
much as its audio and video travel apart (300 ms in tests/e2e/test_sync_paths.py), at every
start and every return of the publisher.

:class:`CaptureTimeWait` holds a new publication's first frames (per key: a uid, or a
``(roomid, uid)``) that has a sender clock (``PublisherInfo.sender_clock``: a WebRTC publisher,
here or relayed) until every track seen so far carries a capture time, then gives them back,
in order, with the capture time filled in for those before it: ``wall0 + timestamp /
clock_rate``, where ``wall0`` is what the track's first timed frame says of its timestamp 0 —
the mapping the sender report gave, which holds for the frames before it too. A publication
whose tracks have capture times from their first frame (FFmpeg sends a report with its first
packet) is not held at all; one whose reports never come is given back as it is after
``HOLD_S``; one without a sender clock (ingested publishers, whose container's timestamps give
capture times from the first frame; WHEP and Janus pulls; a web page) is never held. Frames
keep their ``arrival``, so a reader places them where they belong on its own clock, only later.

A source recording waits (``recorder/source.py``): it writes those frames a moment later and
loses none. A mix does not: it plays 64 ms behind real time, so frames given back a second late
would come after their place and be dropped — a publisher's first words lost at every join —
and it places a publication's frames by their arrival until its first sender report instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from cloudrec.mediatypes import EncodedFrame
from cloudrec.rooms.subscription import PublisherInfo

__all__ = ["HOLD_S", "CaptureTimeWait"]

HOLD_S = 3.0  # the longest a new publication's first frames wait for its capture times

K = TypeVar("K", bound=Hashable)


@dataclass
class _Held:
    epoch: int
    start: float | None = None  # the first frame's arrival
    frames: list[EncodedFrame] = field(default_factory=list)
    kinds: set[str] = field(default_factory=set)
    wall0: dict[str, float] = field(default_factory=dict)  # per kind: capture time of ts 0
    done: bool = False


class CaptureTimeWait(Generic[K]):
    """See the module docstring. One per reader, on its event loop."""

    def __init__(self, hold_s: float = HOLD_S) -> None:
        self.hold_s = hold_s
        self._keys: dict[K, _Held] = {}

    def published(self, key: K, info: PublisherInfo) -> list[EncodedFrame]:
        """A publication of ``key`` begins (its ``published`` event): its first frames are
        held if it has a sender clock. Answers what an earlier publication of ``key`` held."""
        out = self.release(key)
        if info.sender_clock:
            self._keys[key] = _Held(info.epoch)
        return out

    def push(self, key: K, frame: EncodedFrame) -> list[EncodedFrame]:
        """``frame`` of ``key``: the frames to take now, in order (none while they are held;
        the held ones and this one when the wait ends)."""
        held = self._keys.get(key)
        if held is None or held.done or held.epoch != frame.epoch:
            return [frame]
        if held.start is None:
            held.start = frame.arrival
        held.frames.append(frame)
        held.kinds.add(frame.kind)
        if frame.wallclock is not None and frame.kind not in held.wall0:
            held.wall0[frame.kind] = frame.wallclock - frame.timestamp / (frame.clock_rate or 1)
        if held.kinds <= held.wall0.keys() or frame.arrival - held.start >= self.hold_s:
            return self._give_back(held)
        return []

    def release(self, key: K) -> list[EncodedFrame]:
        """End ``key``'s wait now (it left, the recording pauses or ends): what it held."""
        held = self._keys.pop(key, None)
        return [] if held is None or held.done else self._give_back(held)

    def release_all(self) -> list[tuple[K, EncodedFrame]]:
        """End every wait now: ``(key, frame)`` of what they held."""
        return [(key, f) for key in list(self._keys) for f in self.release(key)]

    @staticmethod
    def _give_back(held: _Held) -> list[EncodedFrame]:
        held.done = True
        frames, held.frames = held.frames, []
        wall0 = held.wall0
        if not wall0:
            return frames
        return [dataclasses.replace(f, wallclock=wall0[f.kind] + f.timestamp / (f.clock_rate or 1))
                if f.wallclock is None and f.kind in wall0 else f for f in frames]
