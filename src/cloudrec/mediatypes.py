"""What travels from the room plane to recorders: encoded media, never decoded frames.

This module is a leaf (it imports nothing of cloudrec): publishers build these objects through
``rooms`` (:meth:`cloudrec.rooms.publication.Publication.write`), readers get them from a
``rooms`` subscription, and ``media`` takes them without importing ``rooms``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["audio", "video"]


# Not ``frozen``: a frozen dataclass's __init__ sets each field through object.__setattr__, six
# times the cost of a plain one, and frames are built per packet. They are never changed after
# they are built (``dataclasses.replace`` makes another); ``unsafe_hash`` keeps them hashable.
@dataclass(slots=True, unsafe_hash=True)
class EncodedFrame:
    """One encoded access unit (video) or packet (audio) as received from a publisher.

    ``timestamp`` is the RTP timestamp, unwrapped (monotonic across 32-bit wrap) and counted from
    the first frame of this publication, in ``clock_rate`` units (90000 for video, 48000 for
    Opus). ``epoch`` identifies the publication: it changes when the uid publishes again (a new
    WebRTC session), and timestamps restart with it. ``arrival`` is ``time.monotonic()`` when
    the frame was complete. ``wallclock`` is when the publisher captured it: seconds since the
    epoch on the publisher's own clock, from its RTCP sender reports (NTP ↔ RTP), the same clock
    for its audio and video; None when it sent none yet, or for publishers that have none
    (ingested RTMP, SRT, RTSP, ... streams, whose timestamps already share one timeline).
    """

    kind: Kind
    codec: str  # "h264", "vp8" or "opus" (lower case, as in the SDP)
    data: bytes  # H.264: one Annex B access unit; VP8: one frame; Opus: one packet
    timestamp: int
    clock_rate: int
    arrival: float
    keyframe: bool
    epoch: int
    wallclock: float | None = None
