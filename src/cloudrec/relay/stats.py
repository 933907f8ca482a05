"""Counters of a relay end for ``/metrics``: plain ints bumped on the hot path, summed on demand."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class RelayStats:
    frames: int = 0  # frames sent (server) or handed to the hub (links)
    bytes: int = 0  # bytes on the wire, headers included
    dropped_video: int = 0  # video frames dropped for a slow peer, resuming at a keyframe
    dropped_audio: int = 0
    keyframe_requests: int = 0  # requests sent upstream (links) or passed to publishers (server)
    connections: int = 0  # connections made (links) or accepted and authenticated (server)
    refused: int = 0  # handshakes that failed authentication

    def add(self, other: RelayStats) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}
