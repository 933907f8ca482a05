"""Live push of a mix: the encoded H.264 + AAC packets the HLS segments get, also sent to up
to two ``rtmp://`` (FLV) or ``srt://`` (MPEG-TS over libsrt) URLs while the mix records.

No second encode: the very packets of the mix's encoders are muxed. H.264 goes in as Annex B
(with SPS/PPS before every IDR, as the mix encodes it): PyAV takes the FLV sequence header from
a session's first key frame (its ``extract_extradata``) and FFmpeg's FLV muxer turns Annex B
into length-prefixed NAL units. AAC goes in raw (no ADTS); its AudioSpecificConfig comes from
an unopened AAC codec context on the stream, which PyAV opens when the header is written (it
encodes nothing: no frame ever goes to it). The muxing is :mod:`cloudrec.media.push.pusher`'s.

It never stops or slows the recording:

- The encode path only calls :meth:`LivePush.video` / :meth:`LivePush.audio`, which put the
  packet on a bounded queue (``MAX_QUEUE``) and return; a full queue drops the packet and the
  push resynchronises on the next key frame.
- Connecting, muxing and network writes happen in a child process per URL
  (:mod:`cloudrec.media.push.pusher`), fed by a supervisor thread of :class:`LivePush`. Not a
  thread of the mix's process: FFmpeg's RTMP connect runs inside a PyAV call that holds the
  GIL with no timeout, so a server that accepts and never answers would stop the mix's
  encoder with it.
- A URL that cannot be reached, a connection that drops, or a child that makes no progress for
  ``IO_TIMEOUT_S`` (it is killed) ends the session; the supervisor waits ``BACKOFF_S`` (1 s,
  doubling to 30 s) and starts again. The queue is drained first, so a new session starts
  from the next key frame, never from stale media, with timestamps from 0.
- A new encoder (``updatemixrecord`` changing size, rate or bit rate) brings new SPS/PPS: the
  child closes the session and opens a new one at once, with the new sequence header.

State (``state()``): ``connecting``, ``live``, ``retrying`` (with the last ``error`` and when
the next attempt is due) or ``stopped``, and counters; URLs appear redacted (:func:`redact`),
since the path and query of a push URL usually hold its stream key.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import select
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cloudrec.media.push import srt as push_srt
from cloudrec.media.push.pusher import AUDIO, CONFIG, GAP, VIDEO, frame

log = logging.getLogger(__name__)

MAX_URLS = 2
MAX_QUEUE = 600  # packets (~6 s of 30 fps video and its audio) before the push drops
BACKOFF_S = 1.0  # first pause before a reconnect; doubles up to
MAX_BACKOFF_S = 30.0
IO_TIMEOUT_S = 5.0  # a child with packets to take that says nothing this long is killed
STARTUP_TIMEOUT_S = 30.0  # a child's imports (PyAV) on a busy machine
CLOSE_TIMEOUT_S = 2.0  # how long a stopping child may take to finish its stream


def push_protocols() -> frozenset[str]:
    """The push schemes this host can write to: ``rtmp`` (FFmpeg's native RTMP client in PyAV's
    own build) always; ``srt`` when a libsrt loads (the pusher sends MPEG-TS through it, see
    :mod:`cloudrec.media.push.srt`). Nothing connects to find out."""
    return frozenset({"rtmp"} | ({"srt"} if push_srt.available() else set()))


def redact(url: str) -> str:
    """``url`` without what usually carries a stream key: the path after its first segment
    (an RTMP app name stays), the query, any user info."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        if parts.port:
            netloc += f":{parts.port}"
    except ValueError:
        return "<invalid url>"
    segments = [s for s in parts.path.split("/") if s]
    path = f"/{segments[0]}" if segments else ""
    hidden = len(segments) > 1 or bool(parts.query) or parts.username is not None
    return f"{parts.scheme}://{netloc}{path}" + ("/***" if hidden else "")


class LivePush:
    """Push one URL through a child process; :meth:`video` and :meth:`audio` never block.

    A supervisor thread feeds the child from the bounded queue (non-blocking writes to its
    pipe, so the thread itself never hangs), reads its reports, and ends a session when the
    child exits (an error), or when it has packets to take and says nothing for
    ``IO_TIMEOUT_S`` (a server that does not answer or stopped reading): the child is killed.
    Then it waits ``BACKOFF_S`` (doubling to ``MAX_BACKOFF_S``; back to the start after a
    session that went live) and starts a new child."""

    def __init__(self, url: str, *, video: bool, audio: bool) -> None:
        if not (video or audio):
            raise ValueError("a push needs audio, video or both")
        self.url = url
        self.name = redact(url)
        self._video, self._audio = video, audio
        self._queue: queue.Queue[tuple[int, bytes, int, bool]] = queue.Queue(MAX_QUEUE)
        self._gap = threading.Event()  # the queue overflowed: resync on a key frame
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._state: dict[str, Any] = {"url": self.name, "state": "connecting", "error": None,
                                       "retryat": None, "attempts": 0, "sessions": 0,
                                       "packets": 0, "dropped": 0}
        self._thread = threading.Thread(target=self._run, name=f"push {self.name}", daemon=True)
        self._thread.start()

    # -- the encode path --------------------------------------------------------------------

    def video(self, data: bytes, pts: int, key: bool) -> None:
        """One Annex B access unit at ``pts`` (90 kHz)."""
        if self._video:
            self._offer((VIDEO, data, pts, key))

    def audio(self, data: bytes, pts: int) -> None:
        """One raw AAC-LC frame (no ADTS header) at ``pts`` (90 kHz)."""
        if self._audio:
            self._offer((AUDIO, data, pts, False))

    def _offer(self, item: tuple[int, bytes, int, bool]) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self._gap.set()
            with self._lock:
                self._state["dropped"] += 1

    # -- control ----------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._state)

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Stop the push: the child finishes the stream (what is queued goes out if the
        server takes it within ``timeout``) or is killed."""
        self._stop.set()
        self._thread.join(timeout + 1.0)
        self._set(state="stopped", retryat=None)

    def _set(self, **changes: Any) -> None:
        with self._lock:
            self._state.update(changes)

    # -- the supervisor thread --------------------------------------------------------------

    def _run(self) -> None:
        delay = BACKOFF_S
        while not self._stop.is_set():
            self._set(state="connecting", retryat=None)
            try:
                went_live, error = _Child(self).run()
            except Exception as exc:  # the child could not even be started
                went_live, error = False, f"{type(exc).__name__}: {exc}"
            if self._stop.is_set():
                break
            if went_live:
                delay = BACKOFF_S  # it was live: this failure starts the backoff anew
            self._failed(error or "the push process ended", delay)
            if self._stop.wait(delay):
                break
            delay = min(delay * 2, MAX_BACKOFF_S)
        self._set(state="stopped", retryat=None)

    def _failed(self, error: str, delay: float) -> None:
        error = error.replace(self.url, self.name).replace("<url>", self.name)
        with self._lock:
            self._state.update(state="retrying", error=error, attempts=self._state["attempts"] + 1,
                               retryat=int((time.time() + delay) * 1000))
        log.warning("push %s failed (%s); retrying in %.0f s", self.name, error, delay)

    def _went_live(self) -> None:
        with self._lock:
            self._state.update(state="live", error=None, retryat=None,
                               sessions=self._state["sessions"] + 1)
        log.info("push %s is live", self.name)


class _Child:
    """One push process and the session it runs (see :class:`LivePush`)."""

    def __init__(self, push: LivePush) -> None:
        self.push = push
        self.heard = time.monotonic()  # the child's last report
        self.ready = False
        self.live = False
        self.taken = 0
        self.error: str | None = None

    def run(self) -> tuple[bool, str | None]:
        """(whether the session went live, why it ended: None after a stop)."""
        push = self.push
        while True:  # a session starts on fresh media: forget what waited for it
            try:
                push._queue.get_nowait()
            except queue.Empty:
                break
        push._gap.clear()
        env = dict(os.environ)
        src = str(Path(__file__).resolve().parents[2])  # this very cloudrec
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        proc = subprocess.Popen(
            [sys.executable, "-m", "cloudrec.media.push.pusher"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, close_fds=True,
            start_new_session=True)
        assert proc.stdin is not None and proc.stdout is not None
        reader = threading.Thread(target=self._read, args=(proc.stdout,), daemon=True,
                                  name=f"push {push.name} reports")
        reader.start()
        fd = proc.stdin.fileno()
        os.set_blocking(fd, False)
        config = json.dumps({"url": push.url, "video": push._video, "audio": push._audio})
        pending = bytearray(frame(CONFIG, config.encode()))
        sent = 0
        stopping_at: float | None = None
        try:
            while True:
                if proc.poll() is not None:
                    return self.live, self.error or f"the push process {_exit(proc.returncode)}"
                if push._stop.is_set():
                    stopping_at = stopping_at or time.monotonic()
                    if time.monotonic() - stopping_at > CLOSE_TIMEOUT_S:
                        return self.live, None  # what it has not taken yet is given up
                if not pending:
                    if push._stop.is_set():
                        proc.stdin.close()  # EOF: the child finishes the stream and exits
                        try:
                            proc.wait(CLOSE_TIMEOUT_S)
                        except subprocess.TimeoutExpired:
                            pass
                        return self.live, None
                    try:
                        kind, data, pts, key = push._queue.get(timeout=0.1)
                    except queue.Empty:
                        continue
                    if push._gap.is_set():
                        push._gap.clear()
                        pending += frame(GAP, b"")
                        sent += 1
                    pending += frame(kind, data, pts, key)
                    sent += 1
                _, writable, _ = select.select([], [fd], [], 0.1)
                if writable:
                    try:
                        written = os.write(fd, pending)
                    except BlockingIOError:
                        written = 0
                    except OSError as exc:  # the child is gone: its exit says why
                        proc.wait(CLOSE_TIMEOUT_S)
                        return self.live, self.error or f"{type(exc).__name__}: {exc}"
                    del pending[:written]
                behind = bool(pending) or sent > self.taken
                limit = IO_TIMEOUT_S if self.ready else STARTUP_TIMEOUT_S  # imports take long
                if behind and time.monotonic() - self.heard > limit:
                    what = "connecting" if not self.live else "sending"
                    return self.live, (f"no progress {what} for {IO_TIMEOUT_S:.0f} s (the "
                                       "server does not answer or does not read)")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            reader.join(1.0)

    def _read(self, stdout: Any) -> None:
        """The child's reports (JSON lines) until it closes its end."""
        for line in stdout:
            try:
                report = json.loads(line)
            except ValueError:
                continue
            self.heard = time.monotonic()
            if report.get("ready"):
                self.ready = True
            if "taken" in report:
                taken = int(report["taken"])
                with self.push._lock:
                    self.push._state["packets"] += taken - self.taken
                self.taken = taken
            if report.get("live"):
                self.live = True
                self.push._went_live()
            if "error" in report:
                self.error = str(report["error"])


def _exit(code: int | None) -> str:
    if code is not None and code < 0:
        return f"was killed by signal {-code}"
    return f"exited with status {code}"


class PushFanout:
    """The pushes of one mix (one :class:`LivePush` per URL), as one packet sink."""

    def __init__(self, urls: list[str], *, video: bool, audio: bool) -> None:
        self.pushes = [LivePush(url, video=video, audio=audio) for url in urls[:MAX_URLS]]

    def video(self, data: bytes, pts: int, key: bool) -> None:
        for push in self.pushes:
            push.video(data, pts, key)

    def audio(self, data: bytes, pts: int) -> None:
        for push in self.pushes:
            push.audio(data, pts)

    def states(self) -> list[dict[str, Any]]:
        return [push.state() for push in self.pushes]

    def close(self) -> None:
        for push in self.pushes:
            push._stop.set()  # all stop together; then each is waited for
        for push in self.pushes:
            push.close()


def push_warnings(states: list[dict[str, Any]]) -> list[str]:
    """queryrecord ``warnings`` for pushes that are not live now."""
    out = []
    for s in states:
        if s.get("state") == "retrying":
            out.append(f"push {s['url']} failed ({s['error']}); retry {s['attempts']} "
                       "with backoff, the recording goes on")
    return out
