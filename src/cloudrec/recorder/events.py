"""A recording's callback events, in order.

Each event goes to the outbox at once. While the outbox cannot take it (its database is on a
full disk), it waits here, in memory, with every event after it: they go, still in order, at
the next event or :meth:`EventQueue.flush`. A failing outbox never ends the recording.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

Emit = Callable[[str, dict[str, Any]], None]


class EventQueue:
    def __init__(self, recordid: str, emit: Emit | None) -> None:
        self.recordid = recordid
        self._emit = emit  # None: the recording sends no events
        self._waiting: deque[tuple[str, dict[str, Any]]] = deque()  # not yet in the outbox

    def __len__(self) -> int:
        return len(self._waiting)

    def emit(self, event_type: str, data: dict[str, Any]) -> None:
        """Queue an event in the outbox, or keep it here (logged) while the outbox fails."""
        if self._emit is None:
            return
        self._waiting.append((event_type, data))
        try:
            self.flush()
        except Exception as exc:
            log.error("recording %s: event %s waits (%d waiting): the outbox failed: %s",
                      self.recordid, event_type, len(self._waiting), exc)

    def flush(self) -> None:
        """Hand the waiting events to the outbox, oldest first; raises what the outbox
        raised (the events from the failing one on stay here)."""
        while self._waiting:
            event_type, data = self._waiting[0]
            assert self._emit is not None
            self._emit(event_type, data)
            self._waiting.popleft()
