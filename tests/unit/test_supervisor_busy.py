"""A worker that misses pings is replaced when it is hung, left running when it is busy."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

from cloudrec.workers import supervisor as sup


class Silent:
    """A worker client whose status call never answers in time."""

    async def status(self, timeout: float) -> dict[str, Any]:
        raise TimeoutError("no answer")


async def misses(code: str, stop: bool, n: int) -> tuple[list[str], bool]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code)
    replaced: list[str] = []
    try:
        if stop:
            os.kill(proc.pid, signal.SIGSTOP)  # hung: alive, using no CPU
        s = sup.Supervisor.__new__(sup.Supervisor)
        s._closing, s._restarting = False, set()
        s._replace = lambda slot, why: replaced.append(why)  # type: ignore[method-assign]
        slot = sup.WorkerProcess(index=0, id="n/w0", proc=proc, url="", relay="",
                                 client=Silent())  # type: ignore[arg-type]
        slot.cpu_at_miss = sup.cpu_seconds(proc.pid)
        for _ in range(n):
            await asyncio.sleep(0.5)
            assert await s.status(slot) is None
        return replaced, proc.returncode is None
    finally:
        proc.kill()
        await proc.wait()


def test_a_hung_worker_is_replaced_after_max_misses() -> None:
    replaced, _ = asyncio.run(misses("import time; time.sleep(60)", True, sup.MAX_MISSES))
    assert replaced and "missed 3 pings" in replaced[0]


def test_a_busy_worker_is_left_running_then_replaced_at_the_busy_limit() -> None:
    busy = "while True: pass"
    replaced, alive = asyncio.run(misses(busy, False, sup.MAX_MISSES + 2))
    assert replaced == [] and alive
    replaced, _ = asyncio.run(misses(busy, False, sup.MAX_BUSY_MISSES))
    assert replaced and f"missed {sup.MAX_BUSY_MISSES} pings" in replaced[0]


def test_cpu_seconds_of_a_process() -> None:
    assert sup.cpu_seconds(os.getpid()) is not None and sup.cpu_seconds(-1) is None
