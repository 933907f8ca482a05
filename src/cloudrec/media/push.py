"""Live push of a mix: the encoded H.264 + AAC packets the HLS segments get, also sent to up
to two ``rtmp://`` (FLV) or ``srt://`` (MPEG-TS) URLs while the mix records.

No second encode: :class:`LivePush` muxes the very packets of the mix's encoders. H.264 goes
in as Annex B (with SPS/PPS before every IDR, as the mix encodes it): PyAV takes the FLV
sequence header from the first key frame (its ``extract_extradata``) and FFmpeg's FLV muxer
turns Annex B into length-prefixed NAL units. AAC goes in raw (no ADTS); its
AudioSpecificConfig comes from an unopened AAC codec context on the stream, which PyAV opens
when the header is written (it encodes nothing: no frame ever goes to it).

It never stops or slows the recording:

- The encode path only calls :meth:`LivePush.video` / :meth:`LivePush.audio`, which put the
  packet on a bounded queue (``MAX_QUEUE``) and return; a full queue drops the packet and the
  push resynchronises on the next key frame. Connecting, muxing and network writes happen in
  the push's own thread (FFmpeg releases the GIL while it waits on the network).
- A URL that cannot be reached, or a connection that drops, ends the session; the thread waits
  ``BACKOFF_S`` (1 s, doubling to 30 s) and connects again. Meanwhile the queue is drained, so
  a reconnect starts from the next key frame, never from stale media. Each session's
  timestamps start at 0 at its first key frame.
- Network I/O has a timeout (``IO_TIMEOUT_S``), so a server that stops reading ends the
  session instead of blocking the thread for ever.
- A new encoder (``updatemixrecord`` changing size, rate or bit rate) brings new SPS/PPS: the
  session is closed and a new one starts at once, with the new sequence header.

State (``state()``): ``connecting``, ``live``, ``retrying`` (with the last ``error`` and when
the next attempt is due) or ``stopped``, and counters; URLs appear redacted (:func:`redact`),
since the path and query of a push URL usually hold its stream key.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from fractions import Fraction
from typing import Any
from urllib.parse import urlsplit

import av

from cloudrec.media import h264
from cloudrec.media.hls import TS_CLOCK

log = logging.getLogger(__name__)

FORMATS = {"rtmp": "flv", "srt": "mpegts"}  # URL scheme -> FFmpeg muxer
MAX_URLS = 2
MAX_QUEUE = 600  # packets (~6 s of 30 fps video and its audio) before the push drops
BACKOFF_S = 1.0  # first pause before a reconnect; doubles up to
MAX_BACKOFF_S = 30.0
IO_TIMEOUT_S = 5.0  # a connect or a write that takes longer ends the session
CLOSE_TIMEOUT_S = 2.0  # how long closing waits for the push thread
_TIME_BASE = Fraction(1, TS_CLOCK)


def ffmpeg_protocols() -> frozenset[str]:
    """The push schemes this process's FFmpeg (PyAV's own build) can write to.

    RTMP is FFmpeg's native implementation and always there; SRT needs FFmpeg built with
    ``--enable-libsrt``, which PyAV's wheels are not. Read from the library's configuration:
    probing by connecting would wait on the network."""
    config = str(av._core.library_meta["libavformat"].get("configuration", ""))
    return frozenset({"rtmp"} | ({"srt"} if "--enable-libsrt" in config else set()))


def unsupported(url: str) -> str | None:
    """Why this server cannot push to ``url``, or None when it can."""
    scheme = urlsplit(url).scheme.lower()
    if scheme not in FORMATS:
        return "must be an rtmp:// or srt:// URL"
    if scheme not in ffmpeg_protocols():
        return (f"{scheme}:// is not supported by this server: its FFmpeg (PyAV) was built "
                f"without {scheme.upper()}; use rtmp://")
    return None


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


class _SessionEnd(Exception):
    """End the session and start a new one at once, from ``item`` (a key frame with new
    parameter sets)."""

    def __init__(self, item: tuple[str, bytes, int, bool]) -> None:
        super().__init__("new parameter sets")
        self.item = item


class LivePush:
    """Push one URL from its own thread; :meth:`video` and :meth:`audio` never block."""

    def __init__(self, url: str, *, video: bool, audio: bool) -> None:
        if not (video or audio):
            raise ValueError("a push needs audio, video or both")
        self.url = url
        self.name = redact(url)
        self.format = FORMATS[urlsplit(url).scheme.lower()]
        self._video, self._audio = video, audio
        self._queue: queue.Queue[tuple[str, bytes, int, bool]] = queue.Queue(MAX_QUEUE)
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
            self._offer(("video", data, pts, key))

    def audio(self, data: bytes, pts: int) -> None:
        """One raw AAC-LC frame (no ADTS header) at ``pts`` (90 kHz)."""
        if self._audio:
            self._offer(("audio", data, pts, False))

    def _offer(self, item: tuple[str, bytes, int, bool]) -> None:
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
        """Stop the push (what is queued is sent within ``timeout`` if the server takes it)."""
        self._stop.set()
        self._thread.join(timeout)
        self._set(state="stopped", retryat=None)

    def _set(self, **changes: Any) -> None:
        with self._lock:
            self._state.update(changes)

    # -- the push thread --------------------------------------------------------------------

    def _run(self) -> None:
        delay = BACKOFF_S
        first: tuple[str, bytes, int, bool] | None = None
        while not self._stop.is_set():
            self._set(state="connecting", retryat=None)
            try:
                start, first = first, None
                if self._session(start):
                    delay = BACKOFF_S  # it was live: the next failure starts the backoff anew
            except _SessionEnd as end:
                first = end.item
                continue
            except Exception as exc:  # the URL failed or dropped: retry with backoff
                self._failed(exc, delay)
                if self._stop.wait(delay):
                    break
                delay = min(delay * 2, MAX_BACKOFF_S)
                continue
        self._set(state="stopped", retryat=None)

    def _failed(self, exc: BaseException, delay: float) -> None:
        error = f"{type(exc).__name__}: {exc}".replace(self.url, self.name)  # FFmpeg names it
        with self._lock:
            self._state.update(state="retrying", error=error, attempts=self._state["attempts"] + 1,
                               retryat=int((time.time() + delay) * 1000))
        log.warning("push %s failed (%s); retrying in %.0f s", self.name, error, delay)

    def _drain(self) -> None:
        """Forget what was queued while no session ran: a session starts on fresh media."""
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._gap.clear()

    def _session(self, first: tuple[str, bytes, int, bool] | None) -> bool:
        """One connection, from ``first`` or else the next key frame, until stop (True when
        it went live) or an error (raises)."""
        if first is None:
            self._drain()
        container: av.container.OutputContainer | None = None
        streams: dict[str, Any] = {}
        origin: int | None = None
        params: tuple[bytes | None, bytes | None] | None = None
        live = False
        waiting = self._video  # for a key frame (video), else for the first packet
        try:
            while True:
                if first is not None:
                    (kind, data, pts, key), first = first, None
                else:
                    try:
                        kind, data, pts, key = self._queue.get(timeout=0.2)
                    except queue.Empty:
                        if self._stop.is_set():
                            return live
                        continue
                if self._gap.is_set():  # packets were dropped: wait for the next key frame
                    self._gap.clear()
                    waiting = self._video
                if kind == "video" and key:
                    found = h264.parameter_sets(data)
                    if params is not None and found[0] is not None and found != params:
                        log.info("push %s: new encoder parameters, new session", self.name)
                        raise _SessionEnd((kind, data, pts, key))
                    params = params or (found if found[0] is not None else None)
                if waiting:
                    if self._video and not (kind == "video" and key):
                        continue
                    waiting = False
                if container is None:
                    container, streams = self._open(data if self._video else None)
                    origin = pts
                assert origin is not None
                if pts < origin:
                    continue  # audio from before the session's first key frame
                packet = av.Packet(data)
                packet.stream = streams[kind]
                packet.time_base = _TIME_BASE
                packet.pts = packet.dts = pts - origin
                packet.is_keyframe = key
                container.mux(packet)  # the first one connects and writes the header
                if not live:
                    live = True
                    with self._lock:
                        self._state.update(state="live", error=None, retryat=None,
                                           sessions=self._state["sessions"] + 1)
                    log.info("push %s is live", self.name)
                with self._lock:
                    self._state["packets"] += 1
        finally:
            if container is not None:
                try:
                    container.close()
                except Exception:  # the connection is gone already
                    pass

    def _open(self, keyframe: bytes | None) -> tuple[av.container.OutputContainer,
                                                       dict[str, Any]]:
        """The container of a session (it connects on the first packet); ``keyframe``, the
        session's first video access unit, gives the picture size muxers want up front."""
        size = picture_size(keyframe) if keyframe is not None else None
        container = av.open(self.url, "w", format=self.format, timeout=IO_TIMEOUT_S)
        streams: dict[str, Any] = {}
        if self._video:
            width, height = size or (0, 0)
            streams["video"] = container.add_mux_stream("h264", width=width, height=height)
        if self._audio:
            streams["audio"] = container.add_stream("aac", rate=48_000, layout="stereo")
        return container, streams


def picture_size(keyframe: bytes) -> tuple[int, int] | None:
    """Width and height of an H.264 key frame (with its SPS/PPS), by decoding it: once per
    session, in the push thread, so no SPS parser is needed here."""
    decoder = av.CodecContext.create("h264", "r")
    decoder.thread_count = 1
    try:
        frames = list(decoder.decode(av.Packet(keyframe))) + list(decoder.decode(None))
    except av.FFmpegError:
        return None
    return (frames[0].width, frames[0].height) if frames else None


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
