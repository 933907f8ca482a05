"""A recording's state in the task store: its status and its progress.

Writes are best effort while the recording runs: a status the store does not take is logged
and reported by ``queryrecord`` from memory (:meth:`TaskState.overlay`) until a later write
succeeds; a failed progress write is logged once and made good by the next one. Only the final
state is written durably, by the recording's end (which retries it).
"""

from __future__ import annotations

import logging
from typing import Any

from cloudrec.tasks import Status, StopReason, TaskStore

log = logging.getLogger(__name__)


class TaskState:
    def __init__(self, tasks: TaskStore, recordid: str) -> None:
        self.tasks = tasks
        self.recordid = recordid
        self.status: Status | None = None  # the latest status this recording set
        self.lags = False  # the task store has not taken ``status`` (or the error)
        self._progress_fails = False

    def set_status(self, status: Status, *, error: str | None) -> None:
        """Record ``status`` now if the task store takes it; else :meth:`overlay` reports it
        until a later write succeeds (the recording goes on either way)."""
        try:
            self.write_status(status, error=error)
        except Exception as exc:
            log.error("recording %s: the task store did not take status %s: %s",
                      self.recordid, status.name.lower(), exc)

    def write_status(self, status: Status, *, error: str | None,
                     reason: StopReason | None = None) -> None:
        """Write ``status`` (raises what the store raised). The reason goes with the final
        state only (the store keeps the first one written, and a failing end can still turn
        it into ``error``)."""
        self.status = status
        self.lags = True
        self.tasks.set_status(self.recordid, status,
                              stopreason=str(reason) if reason is not None else None,
                              error=error)
        self.lags = False

    def overlay(self, progress: dict[str, Any], stop_reason: StopReason | None,
                error: str | None) -> dict[str, Any]:
        """``progress`` with the state the task store could not take yet (``status``,
        ``stopreason``, ``error``) while it lags behind the recording."""
        if self.lags and self.status is not None:
            progress.update(status=int(self.status),
                            stopreason=str(stop_reason) if stop_reason else None, error=error)
        return progress

    def save_progress(self, progress: dict[str, Any]) -> None:
        """Best effort: a failed write is logged once and made good by the next one."""
        try:
            self.tasks.set_progress(self.recordid, progress)
        except Exception as exc:
            if not self._progress_fails:
                log.error("saving progress of %s failed: %s", self.recordid, exc)
            self._progress_fails = True
        else:
            self._progress_fails = False
