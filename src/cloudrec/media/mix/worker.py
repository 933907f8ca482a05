"""The media side of one mixed recording, driven by messages only, and its process entry.

:class:`MixWorker` owns a :class:`~cloudrec.media.mix.recorder.MixedHlsRecorder` (per-input
decoders, compositor, encoders, the HLS writer into the spool dir). It takes commands from a
queue and reports back through one ``send(message)`` function, so the same loop runs in the
mix's own process (``python -m cloudrec.media.mix.worker FD``, see :func:`child_main`; the
parent's side is :mod:`cloudrec.recorder.mixproc`) or in a thread of the server. Nothing else
is shared with the recording on the event loop; every message is a tuple of picklable values.

This module lives in ``media`` (not ``recorder``) so that the child imports only the media
pipeline: ``cloudrec.recorder`` pulls in the service, the rooms (aiortc) and storage clients,
which would double a child's start time and memory for nothing.

Commands (loop → worker)::

    ("frames", [packed frame, ...])        a batch, see pack_frame
    ("publishers", uids, video_uids)       the task room's publishers in join order
    ("unpublished", key)                   key = (roomid, uid)
    ("resync", key)                        frames of key were dropped before the worker
    ("update", mixconfig, pictures, token) answered by ("updated", token, error or None)
    ("pause",) / ("resume",)               pauserecord / resumerecord (see MixedHlsRecorder)
    ("push", urls)                         also push the encoded stream live to these URLs
    ("merge", [SegmentInfo, ...])          list segments a returning node stored, in place
    ("stop",)                              close the last segment, #EXT-X-ENDLIST, report done
    ("taken",)                             the loop queued the last segment's upload

Reports (worker → loop)::

    ("ready", pid, segments)     the recorder is open (segments: those a resume found)
    ("started",)                 the clock runs: the first media is being written
    ("segment", SegmentInfo)     a segment closed; the worker waits (HANDOFF_S at most) until
                                 the loop has queued its upload (``taken``), so uploads keep
                                 the order segment → playlist
    ("taken", n)                 n frames taken so far, after each batch: the loop's backlog
                                 (frames sent - taken) is then exact to a batch
    ("keyframe", key)            an input's decoder wants a key frame
    ("updated", token, error)
    ("progress", Progress)       every PROGRESS_S and at the end
    ("snapshot", SnapshotInfo)   a JPEG of the canvas is in the spool (outputs.snapshotinterval)
    ("log", level, logger, text) a warning of the media code, logged again by the loop
    ("done", error or None)      the recorder is closed; nothing follows
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloudrec.lifelines import die_with_parent
from cloudrec.media.hls import SegmentInfo
from cloudrec.media.mix.recorder import MixedHlsRecorder
from cloudrec.media.push.fanout import PushFanout
from cloudrec.media.snapshot import CanvasSnapshots, SnapshotInfo
from cloudrec.mediatypes import EncodedFrame
from cloudrec.models.mixconfig import MixConfig

log = logging.getLogger(__name__)

Key = tuple[str, str]
Message = tuple[Any, ...]
HANDOFF_S = 10.0  # the longest the worker waits for the loop to take a closed segment
PROGRESS_S = 0.25  # how often the worker reports its counters


@dataclass(frozen=True)
class MixSpec:
    """Everything a worker needs to open the recorder; sent once, pickled in process mode."""

    spool_dir: Path
    basename: str
    mixconfig: MixConfig
    roomid: str
    video: bool
    audio: bool
    pictures: dict[str, bytes]
    segment_seconds: float
    resume: bool
    encoder_threads: int | None = None
    snapshot_interval: int | None = None  # outputs.snapshotinterval: JPEGs of the canvas


@dataclass
class Progress:
    """The worker's counters, as the loop last heard them."""

    taken: int = 0  # frames taken so far
    last_media: float = 0.0  # time.monotonic() of the last input media the mix used
    frames_skipped: int = 0
    frames_in: int = 0
    frames_out: int = 0
    duration: float = 0.0  # seconds written, the open segment included
    wanted: list[Key] = field(default_factory=list)
    push: list[dict[str, Any]] = field(default_factory=list)  # each live push's state


def pack_frame(key: Key, f: EncodedFrame) -> tuple[Any, ...]:
    """A flat tuple pickles several times faster than the dataclass."""
    return (key[0], key[1], f.kind, f.codec, f.data, f.timestamp, f.clock_rate, f.arrival,
            f.keyframe, f.epoch, f.wallclock)


def unpack_frame(t: tuple[Any, ...]) -> tuple[Key, EncodedFrame]:
    return (t[0], t[1]), EncodedFrame(*t[2:])


class MixWorker:
    """Runs one mix until ``("stop",)``; ``send`` returns False once nobody listens."""

    def __init__(self, spec: MixSpec, send: Callable[[Message], bool],
                 commands: queue.SimpleQueue[Message]) -> None:
        self.spec = spec
        self._send = send
        self._commands = commands
        self.taken = threading.Event()  # set by the transport when the loop took a segment
        self._listening = True
        self._progress = Progress()
        self._push: PushFanout | None = None

    def report(self, message: Message) -> bool:
        if self._listening and not self._send(message):
            self._listening = False
        return self._listening

    def run(self) -> None:
        """Open the recorder, serve commands, close; always ends with a "done" report."""
        error: str | None = None
        rec: MixedHlsRecorder | None = None
        try:
            rec = self._open()
            self.report(("ready", os.getpid(), list(rec.segments)))
            self._loop(rec)
        except BaseException as exc:  # reported: the recording ends with reason error
            log.exception("mixed recording %s: media worker failed", self.spec.basename)
            error = f"{type(exc).__name__}: {exc}"
        finally:
            if rec is not None:
                try:
                    rec.close()
                except Exception as exc:
                    log.exception("closing mixed recording %s failed", self.spec.basename)
                    error = error or f"{type(exc).__name__}: {exc}"
                self._report_progress(rec)
            self.report(("done", error))

    def _open(self) -> MixedHlsRecorder:
        s = self.spec
        snapshots = None
        if s.snapshot_interval and s.video:
            snapshots = CanvasSnapshots(s.snapshot_interval, s.spool_dir, s.basename,
                                        self._snapshot)
        return MixedHlsRecorder(
            s.spool_dir, s.basename, s.mixconfig, s.roomid, video=s.video, audio=s.audio,
            pictures=s.pictures, segment_seconds=s.segment_seconds, on_segment=self._segment,
            request_keyframe=self._request_keyframe, resume=s.resume,
            encoder_threads=s.encoder_threads,
            on_canvas=snapshots.offer if snapshots is not None else None)

    def _snapshot(self, info: SnapshotInfo) -> None:
        self.report(("snapshot", info))

    def _request_keyframe(self, key: tuple[str, str]) -> None:
        self.report(("keyframe", key))

    def _loop(self, rec: MixedHlsRecorder) -> None:
        commands = self._commands
        next_tick = next_report = time.monotonic()
        reported_start = False
        while True:
            now = time.monotonic()
            if now >= next_tick:
                rec.tick(now)
                if rec.started and not reported_start:
                    reported_start = True
                    self.report(("started",))
                next_tick += rec.tick_interval
                if next_tick < now:
                    next_tick = now + rec.tick_interval
                if now >= next_report:
                    self._report_progress(rec)
                    next_report = now + PROGRESS_S
                continue
            try:
                command = commands.get(timeout=next_tick - now)
            except queue.Empty:
                continue
            if command[0] == "stop":
                return
            self._apply(rec, command)

    def _apply(self, rec: MixedHlsRecorder, command: Message) -> None:
        kind = command[0]
        if kind == "frames":
            used = False
            for packed in command[1]:
                key, frame = unpack_frame(packed)
                used = rec.push(key, frame) or used
            self._progress.taken += len(command[1])
            if used:
                self._progress.last_media = time.monotonic()
            self.report(("taken", self._progress.taken))
        elif kind == "publishers":
            rec.set_publishers(command[1], command[2])
        elif kind == "unpublished":
            rec.unpublished(command[1])
        elif kind == "resync":
            rec.resync(command[1])
        elif kind == "merge":
            rec.merge_segments(command[1])
        elif kind == "pause":
            rec.pause(time.monotonic())
        elif kind == "resume":
            rec.resume(time.monotonic())
        elif kind == "push" and self._push is None:
            self._push = PushFanout(list(command[1]), video=self.spec.video,
                                    audio=self.spec.audio)
            rec.add_sink(self._push)
        elif kind == "update":
            _, mixconfig, pictures, token = command
            try:
                rec.update(mixconfig, pictures)
            except ValueError as exc:
                self.report(("updated", token, str(exc)))
            else:
                self.report(("updated", token, None))

    def _report_progress(self, rec: MixedHlsRecorder) -> None:
        p = self._progress
        p.frames_skipped = rec.stats.frames_skipped
        p.frames_in, p.frames_out = rec.stats.frames_in, rec.stats.frames_out
        p.duration = rec.duration
        p.wanted = sorted(rec.wanted)
        p.push = self._push.states() if self._push is not None else []
        self.report(("progress", Progress(**vars(p))))

    def _segment(self, segment: SegmentInfo) -> None:
        self.taken.clear()
        if self.report(("segment", segment)):
            self.taken.wait(HANDOFF_S)


# -- the channel: length-prefixed pickles -------------------------------------------------------

_HEADER = struct.Struct("!I")
HEADER_SIZE = _HEADER.size


def encode_message(message: Message) -> bytes:
    """4-byte big-endian length, then the pickled message (both ends are this code)."""
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(payload)) + payload


def message_size(header: bytes) -> int:
    (size,) = _HEADER.unpack(header)
    return int(size)


class Channel:
    """The child's end of the socket: blocking reads in one thread, writes from any thread
    under a lock; ``send`` returns False once the parent is gone."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._file = sock.makefile("rb")
        self._lock = threading.Lock()

    def recv(self) -> Message | None:
        header = self._file.read(HEADER_SIZE)
        if len(header) < HEADER_SIZE:
            return None
        size = message_size(header)
        payload = self._file.read(size)
        if len(payload) < size:
            return None
        message: Message = pickle.loads(payload)
        return message

    def send(self, message: Message) -> bool:
        data = encode_message(message)
        try:
            with self._lock:
                self._sock.sendall(data)
        except OSError:
            return False
        return True


# -- the child process ---------------------------------------------------------------------------

MIX_NICE = 2  # see child_main


class _Forward(logging.Handler):
    """Warnings of the media code go to the parent, which logs them with its own settings."""

    def __init__(self, channel: Channel) -> None:
        super().__init__(logging.WARNING)
        self._channel = channel

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            if not self._channel.send(("log", record.levelno, record.name, text)):
                sys.stderr.write(f"{record.name}: {text}\n")
        except Exception:
            self.handleError(record)


def _read_commands(channel: Channel, worker: MixWorker,
                   commands: queue.SimpleQueue[Message]) -> None:
    while True:
        message = channel.recv()
        if message is None:  # the parent is gone (killed): go with it, see child_main
            os._exit(0)
        if message[0] == "taken":  # read on after a stop: the last segment is handed over
            worker.taken.set()
        else:
            commands.put(message)


def child_main(fd: int) -> int:
    """The mix process: ``fd`` is its end of the socket pair; the first message is
    ``("open", MixSpec)``.

    Signals: SIGINT is ignored (the child runs in its own session anyway; the server stops its
    mixes in order). SIGTERM finishes the files as a stop does. The parent gone (EOF: it was
    killed) ends the child at once, writing nothing more: the task is still active and a
    restarted service resumes it into the same spool directory, which a child still finishing
    its files would race with. The segment it was writing is lost, as an in-process
    recording's would be.

    Priority: the child lowers its own by ``MIX_NICE``. Under CPU overload the kernel then lets
    the server's receive path run first: packets not read in time are lost for every recording
    of the worker, while a late mix only skips output frames (it keeps real time)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()  # a killed worker's mix must not write on beside its restart
    try:
        os.nice(MIX_NICE)
    except OSError:
        pass
    channel = Channel(socket.socket(fileno=fd))
    root = logging.getLogger()
    root.handlers[:] = [_Forward(channel)]
    root.setLevel(logging.WARNING)
    opening = channel.recv()
    if opening is None or opening[0] != "open":
        return 2
    commands: queue.SimpleQueue[Message] = queue.SimpleQueue()
    worker = MixWorker(opening[1], channel.send, commands)
    signal.signal(signal.SIGTERM, lambda *_: commands.put(("stop",)))
    threading.Thread(target=_read_commands, args=(channel, worker, commands),
                     name="mix-channel", daemon=True).start()
    worker.run()
    return 0


if __name__ == "__main__":
    # run the importable copy of this module, so what it pickles names
    # cloudrec.media.mix.worker.Progress rather than __main__.Progress
    from cloudrec.media.mix.worker import child_main as _child_main

    sys.exit(_child_main(int(sys.argv[1])))
