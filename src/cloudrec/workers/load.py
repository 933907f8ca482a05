"""A worker's measured load: the CPU of its process tree (itself and the processes it started,
such as a mixed recording's media process), as cores over the last few seconds.

Read from ``/proc`` (Linux): the utime+stime of each process, so a child that exits takes its
share with it and a new one counts from its start.
"""

from __future__ import annotations

import os
import time

_TICK = os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                out.extend(int(c) for c in fh.read().split())
    except OSError:
        pass
    return out


def cpu_seconds(pid: int) -> float | None:
    """The process's user + system CPU time in seconds, or None when it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime
    except (OSError, IndexError, ValueError):
        return None


def tree_cpu_seconds(pid: int | None = None) -> dict[int, float]:
    """CPU seconds of ``pid`` and every descendant, by pid."""
    root = pid or os.getpid()
    seen: dict[int, float] = {}
    todo = [root]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen[p] = cpu_seconds(p) or 0.0
        todo.extend(_children(p))
    return seen


class CpuMeter:
    """Cores used by a process tree, smoothed over ``window_s`` seconds."""

    def __init__(self, pid: int | None = None, window_s: float = 3.0) -> None:
        self.pid = pid
        self.window_s = window_s
        self._last = tree_cpu_seconds(pid)
        self._at = time.monotonic()
        self.cores = 0.0

    def sample(self) -> float:
        now = time.monotonic()
        current = tree_cpu_seconds(self.pid)
        elapsed = now - self._at
        if elapsed > 0:
            used = sum(max(0.0, t - self._last.get(p, 0.0)) for p, t in current.items())
            weight = min(1.0, elapsed / self.window_s)
            self.cores += (used / elapsed - self.cores) * weight
        self._last, self._at = current, now
        return self.cores
