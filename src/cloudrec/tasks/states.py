"""Task states. 0 and 1 are the recordoss API's own; 2..5 are cloudrec's additions.

    INIT ──start──► STARTING ──first segment──► RECORDING ──stop/idle/error──► STOPPING ──► STOPPED
       └───────────────────────── failure ─────────────────────────────────────────────► FAILED
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class Status(IntEnum):
    INIT = 0
    STARTING = 1
    RECORDING = 2
    STOPPING = 3
    STOPPED = 4
    FAILED = 5


class StopReason(StrEnum):
    API = "api"
    IDLE = "idle"
    ERROR = "error"
    SHUTDOWN = "shutdown"
    PAUSED = "paused"  # paused longer than pause_timeout_s


ACTIVE = (Status.INIT, Status.STARTING, Status.RECORDING, Status.STOPPING)
