"""Starts, watches and restarts a node's worker processes (uvicorn's and gunicorn's shape).

- A worker counts as started only once it printed ``READY`` (within ``BOOT_TIMEOUT_S``). A
  worker that fails at boot stops the node's start instead of crash-looping.
- Alive means it answers a status call within ``PING_TIMEOUT_S``; a worker that exits, or
  misses ``MAX_MISSES`` pings in a row without using CPU (hung; a busy one gets up to
  ``MAX_BUSY_MISSES``), is killed and replaced in its slot with the same index,
  so it resumes the tasks it owned (its id is ``{node}/w{index}``).
- Stopping is a drain: SIGTERM lets each worker finalise its recordings within the grace time,
  then SIGKILL.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from cloudrec.cluster import worker_id
from cloudrec.config import Settings, settings_to_json
from cloudrec.workers.client import HttpWorkerClient
from cloudrec.workers.load import cpu_seconds

log = logging.getLogger(__name__)

BOOT_TIMEOUT_S = 60.0
PING_TIMEOUT_S = 3.0
MAX_MISSES = 3
# A worker that misses pings while its CPU time keeps rising is busy (an overloaded box), not
# hung: killing it would turn overload into lost work, so it is left running for up to
# MAX_BUSY_MISSES pings (over a minute: a missed ping takes PING_TIMEOUT_S) before it is
# replaced anyway.
BUSY_CPU_S = 0.05
MAX_BUSY_MISSES = 20



@dataclass
class WorkerProcess:
    index: int
    id: str
    proc: asyncio.subprocess.Process
    url: str
    relay: str
    client: HttpWorkerClient
    misses: int = 0
    restarts: int = 0
    started: float = field(default_factory=time.time)
    cpu_at_miss: float | None = None  # its CPU seconds when it last answered or was judged


class WorkerBootError(RuntimeError):
    pass


class Supervisor:
    def __init__(self, settings: Settings, node: str, secret: str, count: int,
                 front_url: str) -> None:
        self.settings = settings
        self.node = node
        self.secret = secret
        self.count = count
        self.front_url = front_url
        self.slots: dict[int, WorkerProcess] = {}
        self._restarting: set[int] = set()
        self._closing = False

    async def start(self) -> None:
        results = await asyncio.gather(*(self._spawn(i) for i in range(self.count)),
                                       return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            await self.stop(grace_s=0)
            raise WorkerBootError(f"a worker failed to start: {failed[0]}")
        for slot in results:
            assert isinstance(slot, WorkerProcess)
            self.slots[slot.index] = slot

    async def _spawn(self, index: int) -> WorkerProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cloudrec.workers.main",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        assert proc.stdin is not None and proc.stdout is not None
        config = {"settings": settings_to_json(self.settings), "index": index, "node": self.node,
                  "secret": self.secret, "front_url": self.front_url}
        proc.stdin.write((json.dumps(config) + "\n").encode())
        await proc.stdin.drain()
        try:
            ready = await asyncio.wait_for(self._read_ready(proc), BOOT_TIMEOUT_S)
        except (TimeoutError, WorkerBootError) as exc:
            proc.kill()
            await proc.wait()
            raise WorkerBootError(
                f"worker {index} did not start (exit code {proc.returncode})") from exc
        asyncio.get_running_loop().create_task(self._drain_stdout(proc))
        log.info("worker %d started (pid %d) at %s", index, proc.pid, ready["url"])
        return WorkerProcess(index, worker_id(self.node, index), proc, ready["url"],
                             ready.get("relay", ""), HttpWorkerClient(ready["url"], self.secret))

    @staticmethod
    async def _read_ready(proc: asyncio.subprocess.Process) -> dict[str, Any]:
        assert proc.stdout is not None
        while True:
            line = await proc.stdout.readline()
            if not line:
                raise WorkerBootError("exited before it was ready")
            text = line.decode(errors="replace").strip()
            if text.startswith("READY "):
                return dict(json.loads(text[6:]))

    @staticmethod
    async def _drain_stdout(proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while await proc.stdout.readline():
            pass

    async def status(self, slot: WorkerProcess) -> dict[str, Any] | None:
        """The worker's status, or None when it is dead or did not answer (then it is
        replaced in the background)."""
        if slot.proc.returncode is not None:
            self._replace(slot, f"exited with code {slot.proc.returncode}")
            return None
        try:
            status = await slot.client.status(timeout=PING_TIMEOUT_S)
        except Exception as exc:
            slot.misses += 1
            cpu = cpu_seconds(slot.proc.pid)
            busy = (cpu is not None and slot.cpu_at_miss is not None
                    and cpu - slot.cpu_at_miss >= BUSY_CPU_S)
            slot.cpu_at_miss = cpu
            if slot.misses >= MAX_MISSES and busy and slot.misses < MAX_BUSY_MISSES:
                log.warning("worker %d (pid %d) missed %d pings while using CPU: overloaded, "
                            "not hung; left running", slot.index, slot.proc.pid, slot.misses)
            elif slot.misses >= MAX_MISSES:
                self._replace(slot, f"missed {slot.misses} pings ({exc})")
            return None
        slot.misses = 0
        slot.cpu_at_miss = cpu_seconds(slot.proc.pid)
        return status

    def _replace(self, slot: WorkerProcess, why: str) -> None:
        if self._closing or slot.index in self._restarting:
            return
        self._restarting.add(slot.index)
        log.error("worker %d (pid %d) %s: restarting it", slot.index, slot.proc.pid, why)
        asyncio.get_running_loop().create_task(self._restart(slot))

    async def _restart(self, old: WorkerProcess) -> None:
        try:
            if old.proc.returncode is None:
                old.proc.kill()
            await old.proc.wait()
            await old.client.close()
            delay = 0.5
            while not self._closing:
                try:
                    new = await self._spawn(old.index)
                except WorkerBootError as exc:
                    log.error("worker %d failed to restart: %s", old.index, exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10.0)
                    continue
                new.restarts = old.restarts + 1
                self.slots[old.index] = new
                return
        finally:
            self._restarting.discard(old.index)

    async def stop(self, grace_s: float) -> None:
        """Drain: SIGTERM every worker, wait up to ``grace_s``, then SIGKILL."""
        self._closing = True
        slots = list(self.slots.values())
        for slot in slots:
            if slot.proc.returncode is None:
                slot.proc.terminate()
        try:
            async with asyncio.timeout(grace_s):
                await asyncio.gather(*(s.proc.wait() for s in slots))
        except TimeoutError:
            for slot in slots:
                if slot.proc.returncode is None:
                    log.warning("worker %d did not drain in %.0f s: killed", slot.index, grace_s)
                    slot.proc.kill()
            await asyncio.gather(*(s.proc.wait() for s in slots))
        for slot in slots:
            await slot.client.close()
