"""Pause and resume of a recording (``pauserecord`` / ``resumerecord``): the state, its place
in the task's progress, and the rules that do not depend on the kind of recording.

- While paused nothing is written: the open segment is closed when the pause begins (so it is
  stored at once) and media that arrives is dropped. Resuming continues the same playlist
  after ``#EXT-X-DISCONTINUITY``, with timestamps that go on from where the pause began: the
  paused time is not in the recording (the media recorders do that part).
- The state lives in the task's progress (``paused``, ``pausetime`` in ms, ``pausedseconds``,
  ``pauses``), so a task paused before a restart resumes paused, and its pause timeout counts
  from the original ``pausetime``.
- A paused task is never stopped for lack of media; a pause longer than ``pause_timeout_s``
  stops it with reason ``paused``.
- Pausing a paused task, or resuming one that is not paused, answers 4004 with a message that
  names the state (4004: the seed's "unsupported recording parameters", the closest of its
  codes to "not in a state for this").
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from cloudrec.errors import RecordingError

WRONG_STATE = 4004


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class PauseState:
    paused: bool = False
    since_ms: int | None = None  # wall clock of the current pause (survives a restart)
    total_s: float = 0.0  # paused time of the pauses that ended
    count: int = 0  # pauses so far

    @classmethod
    def from_progress(cls, progress: dict[str, Any] | None) -> PauseState:
        """The state a task's stored progress holds (a restart resumes it)."""
        progress = progress or {}
        paused = bool(progress.get("paused"))
        since = progress.get("pausetime")
        return cls(paused=paused,
                   since_ms=int(since) if paused and since is not None else None,
                   total_s=float(progress.get("pausedseconds") or 0.0),
                   count=int(progress.get("pauses") or 0))

    def pause(self, recordid: str) -> None:
        if self.paused:
            raise RecordingError(
                f"recordid {recordid!r} is already paused (since {self.since_ms} ms); "
                "resumerecord resumes it", WRONG_STATE)
        self.paused = True
        self.since_ms = _now_ms()
        self.count += 1

    def resume(self, recordid: str) -> float:
        """End the pause; returns how long it lasted in seconds."""
        if not self.paused:
            raise RecordingError(
                f"recordid {recordid!r} is not paused (it is recording); pauserecord pauses "
                "it", WRONG_STATE)
        lasted = self.paused_for()
        self.paused = False
        self.since_ms = None
        self.total_s += lasted
        return lasted

    def paused_for(self) -> float:
        """Seconds the current pause has lasted (0 when not paused)."""
        if not self.paused or self.since_ms is None:
            return 0.0
        return max(0.0, (_now_ms() - self.since_ms) / 1000)

    def expired(self, timeout_s: float) -> bool:
        return self.paused and self.paused_for() > timeout_s

    def progress(self) -> dict[str, Any]:
        return {"paused": self.paused, "pausetime": self.since_ms,
                "pausedseconds": round(self.total_s + self.paused_for(), 3),
                "pauses": self.count}


def check_not_stopping(recordid: str, stopping: bool) -> None:
    """A recording that is ending can be neither paused nor resumed."""
    if stopping:
        raise RecordingError(f"recordid {recordid!r} is stopping", WRONG_STATE)
