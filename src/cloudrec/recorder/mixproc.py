"""Where a mixed recording's media runs: its own process (default) or a thread of the server.

Why a process: the server receives every WebRTC stream in pure Python on its event loop; a mix
decoding, composing and encoding in a thread of the same process competes with it for the GIL
(livekit/egress runs each recording as its own process for the same reason, and so that a crash
in media code cannot take the service down). Both transports below run the same
:class:`~cloudrec.media.mix.worker.MixWorker` and offer the same five calls: ``open`` (the ready
handshake, returns the segments a resume found), ``send``, ``take_segment``, ``stop`` and the
``done`` future (the error text of an abnormal end, or None). Reports reach the recording
through ``on_report`` on the event loop, in order.

:class:`MixProcess`

- Start: ``python -m cloudrec.media.mix.worker FD`` through ``asyncio.create_subprocess_exec``,
  never ``fork``: a fresh interpreter that inherits only its end of a ``socketpair``
  (``close_fds``: no aiortc UDP socket, no HTTP listener, no lock another thread held), in a
  session of its own so that a terminal's Ctrl-C reaches only the server, which then stops its
  mixes in order. Its ``PYTHONPATH`` starts with the directory this ``cloudrec`` came from.
- Channel: length-prefixed pickles both ways. On this side an asyncio stream: a write never
  blocks the loop; what the child has not read yet waits in the socket and the transport's
  buffer, bounded by the recording's backlog accounting (``MAX_BACKLOG`` in
  :mod:`cloudrec.recorder.mixed`).
- Handshake: the parent sends the :class:`~cloudrec.media.mix.worker.MixSpec`; the child opens
  the recorder and answers ``ready`` within ``READY_TIMEOUT_S``, else it is killed and the
  recording fails.
- Stop: ``("stop",)`` over the channel; the child drains its encoders, closes the last
  segment, writes ``#EXT-X-ENDLIST``, reports ``done`` and exits. Past the grace time: SIGKILL.
- Crash: EOF without ``done``. ``done`` resolves to an error naming the exit status, the
  recording ends with reason ``error``; the segments already closed are on disk and in the
  spool's playlist, and are stored as usual (see ``MixedRecording._close_media``).

:class:`MixThread` shares the GIL with the event loop (a heavy mix slows WebRTC receive) and
cannot be killed; it is kept, behind ``CLOUDREC_MIX_WORKER=thread``, because it costs a few
lines and gives the benchmark its reference, in the same run.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import queue
import signal
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import cloudrec
from cloudrec.media.hls import SegmentInfo
from cloudrec.media.mix.worker import (
    HEADER_SIZE,
    Message,
    MixSpec,
    MixWorker,
    encode_message,
    message_size,
)

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 30.0  # a cold start imports PyAV, numpy and Pillow: seconds on a busy box


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "closed its channel"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


class MixProcess:
    """The parent's handle on one mix child: ``open`` → ``send``… → ``stop``; ``done`` is
    the error text of an abnormal end, or None."""

    def __init__(self, spec: MixSpec, on_report: Callable[[Message], None]) -> None:
        self.spec = spec
        self._on_report = on_report
        self.pid: int | None = None
        self.done: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._proc: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._ended_cleanly = False
        self._error: str | None = None

    async def open(self, timeout: float = READY_TIMEOUT_S) -> list[SegmentInfo]:
        """Start the child and wait for its ``ready``; raises RuntimeError when it fails."""
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        src = str(Path(cloudrec.__file__).resolve().parents[1])  # this very cloudrec
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        try:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "cloudrec.media.mix.worker", str(theirs.fileno()),
                pass_fds=(theirs.fileno(),), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, env=env, start_new_session=True)
        finally:
            theirs.close()
        self.pid = self._proc.pid
        reader, self._writer = await asyncio.open_unix_connection(sock=ours)
        self._writer.write(encode_message(("open", self.spec)))
        try:
            ready = await asyncio.wait_for(self._read_report(reader), timeout)
        except (TimeoutError, asyncio.IncompleteReadError) as exc:
            await self._kill()
            why = ("did not answer in time" if isinstance(exc, TimeoutError)
                   else _describe_exit(self._proc.returncode))
            raise RuntimeError(f"the mix process {why}") from exc
        if ready[0] != "ready":
            await self._wait_exit(5.0)
            raise RuntimeError(ready[1] if ready[0] == "done" else f"mix process: {ready!r}")
        self._reader_task = asyncio.get_running_loop().create_task(self._serve(reader))
        return list(ready[2])

    def send(self, command: Message) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(encode_message(command))

    def take_segment(self) -> None:
        self.send(("taken",))

    async def stop(self, grace_s: float) -> None:
        """Graceful stop over the channel; SIGKILL when the child has not ended after
        ``grace_s``."""
        self.send(("stop",))
        try:
            await asyncio.wait_for(asyncio.shield(self.done), grace_s)
        except TimeoutError:
            log.error("mix process %s did not stop within %.0f s: killing it", self.pid, grace_s)
            await self._kill()
            await asyncio.shield(self.done)
        await self._wait_exit(grace_s)

    @property
    def write_buffer(self) -> int:
        """Bytes queued for the child on this side (diagnostics)."""
        return self._writer.transport.get_write_buffer_size() if self._writer else 0

    # -- internals --------------------------------------------------------------------------

    @staticmethod
    async def _read(reader: asyncio.StreamReader) -> Message:
        size = message_size(await reader.readexactly(HEADER_SIZE))
        message: Message = pickle.loads(await reader.readexactly(size))
        return message

    async def _read_report(self, reader: asyncio.StreamReader) -> Message:
        """The next message that is not a log record (those are logged here)."""
        while True:
            message = await self._read(reader)
            if message[0] != "log":
                return message
            _, level, name, text = message
            logging.getLogger(name).log(level, "[mix %s] %s", self.pid, text)

    async def _serve(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                message = await self._read_report(reader)
                if message[0] == "done":
                    self._ended_cleanly = True
                    self._error = message[1]
                    break
                self._on_report(message)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except Exception as exc:  # a message we cannot read: treat the child as broken
            log.exception("mix process %s sent an unreadable message", self.pid)
            self._error = f"unreadable message from the mix process: {exc}"
            await self._kill()
        finally:
            if self._writer is not None:
                self._writer.close()
            if not self._ended_cleanly and self._error is None:
                code = await self._wait_exit(2.0)
                self._error = f"the mix process {_describe_exit(code)}"
            if not self.done.done():
                self.done.set_result(self._error)

    async def _wait_exit(self, timeout: float) -> int | None:
        assert self._proc is not None
        try:
            async with asyncio.timeout(timeout):
                return await self._proc.wait()
        except TimeoutError:
            await self._kill()
            return self._proc.returncode

    async def _kill(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            try:
                self._proc.kill()
            except ProcessLookupError:
                pass
            await self._proc.wait()


class MixThread:
    """The in-thread transport: the worker in a thread of this process, reports through
    ``call_soon_threadsafe``."""

    def __init__(self, spec: MixSpec, on_report: Callable[[Message], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._on_report = on_report
        self._commands: queue.SimpleQueue[Message] = queue.SimpleQueue()
        self._worker = MixWorker(spec, self._report, self._commands)
        self._ready: asyncio.Future[Message] = self._loop.create_future()
        self.done: asyncio.Future[str | None] = self._loop.create_future()
        self.pid: int | None = os.getpid()
        self._thread = threading.Thread(target=self._worker.run, name=f"mix-{spec.basename}",
                                        daemon=True)

    async def open(self, timeout: float = READY_TIMEOUT_S) -> list[SegmentInfo]:
        self._thread.start()
        ready = await asyncio.wait_for(asyncio.shield(self._ready), timeout)
        if ready[0] != "ready":
            raise RuntimeError(ready[1] or "the mix worker ended before it was ready")
        return list(ready[2])

    def send(self, command: Message) -> None:
        self._commands.put(command)

    def take_segment(self) -> None:
        self._worker.taken.set()

    async def stop(self, grace_s: float) -> None:
        """Ask for the last segment and #EXT-X-ENDLIST; a thread cannot be killed, so past
        ``grace_s`` it is left to finish on its own."""
        self._commands.put(("stop",))
        try:
            await asyncio.wait_for(asyncio.shield(self.done), grace_s)
        except TimeoutError:
            log.error("mix worker %s did not stop within %.0f s", self._thread.name, grace_s)

    def _report(self, message: Message) -> bool:
        try:
            self._loop.call_soon_threadsafe(self._deliver, message)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            return False
        return True

    def _deliver(self, message: Message) -> None:
        if message[0] in ("ready", "done") and not self._ready.done():
            self._ready.set_result(message)
        if message[0] == "done":
            if not self.done.done():
                self.done.set_result(message[1])
        elif message[0] == "log":
            pass  # in this process the record was logged already
        elif message[0] != "ready":
            self._on_report(message)
