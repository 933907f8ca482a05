"""A pulled source read by PyAV in a thread: packets → frames every reader takes.

:func:`pull` opens the URL (or a file-like object carrying MPEG-TS, for SRT), demuxes it and
turns each packet into what :meth:`~cloudrec.rooms.publication.Publication.write` wants:

- H.264 as one Annex B access unit, SPS/PPS in front of every key frame (from the stream's
  extradata, Annex B or an avcC record; AVCC packets of MP4/FLV/RTMP are re-framed);
- AAC as one frame with its ADTS header (from the AudioSpecificConfig when the container has
  none); other codecs under their name (``pcma``, ``h265``...), handed to a
  :class:`~cloudrec.media.normalize.PublicationNormalizer` in the same thread, so readers only
  see H.264 and AAC/Opus;
- timestamps as integers in the codec's clock (90 kHz for video, the sample rate for audio),
  counted from the source's first packet, one origin for both kinds.

A stream that appears midway (an MPEG-TS programme switching codecs on new PIDs) ends the
connection with a ValueError that says so. Open and read have short timeouts (a stalled
source is noticed within ``read_timeout_s``), RTSP runs over TCP, and a source that is a file
(an MP4 or a VOD playlist over HTTP) is read at its own pace, never faster than real time.
The thread hands frames to the event loop with at most :data:`MAX_QUEUED` in flight, so a slow
loop slows the reader instead of growing memory.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import av

from cloudrec.ingest.base import Timeline
from cloudrec.ingest.demux import packet_frame
from cloudrec.media.normalize import PublicationNormalizer

MAX_QUEUED = 256
CODEC_NAMES = {"hevc": "h265", "pcm_alaw": "pcma", "pcm_mulaw": "pcmu", "mp3float": "mp3"}


@dataclass(frozen=True)
class Opened:
    """What the source turned out to hold: the kinds, and the codecs readers will see."""

    kinds: frozenset[str]
    codecs: dict[str, str]
    source_codecs: dict[str, str]


# (kind, codec, clock rate, data, timestamp)
Frame = tuple[str, str, int, bytes, int]


def open_options(url: str, read_timeout_s: float) -> dict[str, str]:
    scheme = url.split(":", 1)[0].lower()
    micros = str(int(read_timeout_s * 1_000_000))
    if scheme in ("rtsp", "rtsps"):
        return {"rtsp_transport": "tcp", "timeout": micros, "analyzeduration": "2000000"}
    if scheme in ("http", "https"):
        return {"rw_timeout": micros, "reconnect": "0", "analyzeduration": "2000000"}
    if scheme in ("rtmp", "rtmps"):
        return {"rw_timeout": micros, "analyzeduration": "2000000"}
    return {"analyzeduration": "1000000", "probesize": "1000000"}


class _Stop(Exception):
    pass


def _packets(container: Any, streams: list[Any]) -> Any:
    """``container.demux(*streams)``; a stream that appears midway (a programme that changes
    its codecs on new PIDs) ends it with a ValueError that says so, where PyAV would raise an
    IndexError."""
    packets = container.demux(*streams)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except IndexError:
            raise ValueError("the source's streams changed midway: a stream appeared that "
                             "was not there when it opened") from None
        yield packet


class _Reader:
    """The thread's side: demux, re-frame, normalise, pace, hand over."""

    def __init__(self, source: Any, fmt: str | None, options: dict[str, str],
                 timeouts: tuple[float, float], paced: bool,
                 post: Callable[[Callable[..., None], Any], None], stop: threading.Event,
                 on_open: Callable[[Opened], None], on_frame: Callable[[Frame], None]) -> None:
        self.source, self.fmt, self.options, self.timeouts = source, fmt, options, timeouts
        self.paced = paced
        self.post, self.stop = post, stop
        self.on_open, self.on_frame = on_open, on_frame
        self.slots = threading.Semaphore(MAX_QUEUED)

    def _hand(self, fn: Callable[..., None], arg: Any) -> None:
        while not self.slots.acquire(timeout=0.2):
            if self.stop.is_set():
                raise _Stop
        if self.stop.is_set():
            raise _Stop

        def call() -> None:
            self.slots.release()
            fn(arg)

        self.post(call, None)

    def run(self) -> str:
        container = av.open(self.source, mode="r", format=self.fmt, options=self.options,
                            timeout=self.timeouts)
        try:
            return self._demux(container)
        finally:
            container.close()

    def _demux(self, container: Any) -> str:
        streams = [s for s in (container.streams.video[:1] + container.streams.audio[:1])]
        if not streams:
            raise ValueError("the source has no audio or video stream")
        normalizer = PublicationNormalizer()
        source_codecs = {s.type: CODEC_NAMES.get(s.codec_context.name, s.codec_context.name)
                         for s in streams}
        codecs = {kind: ("aac" if kind == "audio" and name not in ("aac", "opus") else
                         "h264" if kind == "video" else name)
                  for kind, name in source_codecs.items()}
        self._hand(self.on_open, Opened(frozenset(source_codecs), codecs, source_codecs))
        timeline = Timeline(90000)
        params: dict[int, tuple[bytes, int]] = {}
        began: float | None = None
        for packet in _packets(container, streams):
            if self.stop.is_set():
                return "stopped"
            frame = packet_frame(packet, timeline, params, 0, names=CODEC_NAMES,
                                 audio_rate=8000)
            if frame is None:
                continue
            if self.paced:
                began = self._pace(began, frame.timestamp / frame.clock_rate)
            for out in normalizer.push(frame):
                self._hand(self.on_frame, (out.kind, out.codec, out.clock_rate, out.data,
                                           out.timestamp))
        return "end of stream"

    def _pace(self, began: float | None, media_s: float) -> float:
        now = time.monotonic()
        if began is None:
            return now - media_s
        ahead = media_s - (now - began)
        while ahead > 0 and not self.stop.is_set():
            time.sleep(min(ahead, 0.2))
            ahead = media_s - (time.monotonic() - began)
        return began


async def pull(source: Any, *, fmt: str | None = None, options: dict[str, str] | None = None,
               open_timeout_s: float = 5.0, read_timeout_s: float = 5.0, paced: bool = True,
               stop: threading.Event, on_open: Callable[[Opened], None],
               on_frame: Callable[[Frame], None]) -> str:
    """Read ``source`` (a URL, or a file-like object with ``fmt``) until it ends, fails or
    ``stop`` is set; ``on_open`` and ``on_frame`` run on the event loop, in order. Returns why
    it ended; raises what failed (the caller reports it)."""
    loop = asyncio.get_running_loop()
    if options is None:
        options = open_options(source, read_timeout_s) if isinstance(source, str) else {}

    def post(fn: Callable[..., None], _arg: Any) -> None:
        loop.call_soon_threadsafe(fn)

    reader = _Reader(source, fmt, options, (open_timeout_s, read_timeout_s), paced, post, stop,
                     on_open, on_frame)

    done: asyncio.Future[str] = loop.create_future()

    def settle(result: str | None, error: BaseException | None) -> None:
        if done.done():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result or "")

    def run() -> None:
        try:
            result, error = reader.run(), None
        except _Stop:
            result, error = "stopped", None
        except BaseException as exc:  # handed to the awaiting coroutine
            result, error = None, exc
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:
            pass  # the loop is closed: nobody awaits it

    # a thread of its own, not the loop's default executor: a pull holds its thread for as long
    # as the source lasts, and many pulls would starve every other to_thread of the worker
    threading.Thread(target=run, name="ingress-pull", daemon=True).start()
    result = await done
    await asyncio.sleep(0)  # let the frames posted last run first
    return result
