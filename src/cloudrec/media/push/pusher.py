"""The process that pushes one URL of a mix: ``python -m cloudrec.media.push.pusher``.

Why a process of its own: FFmpeg connects to an RTMP server (TCP connect, handshake, the
``connect``/``publish`` commands) inside ``avio_open``, which PyAV 18 calls holding the GIL and
without the open timeout it applies to inputs. A server that accepts and never answers would
freeze every thread of the process that calls it, the mix's encoder included; and a write that
a stalled server never takes blocks until TCP gives up, minutes later. Here only this process
waits, and its parent (:class:`~cloudrec.media.push.fanout.LivePush`) kills it when it makes no
progress and starts another with backoff.

Wire, both ways over pipes:

- stdin: frames of a 14-byte header ``!BBqI`` (kind, key frame flag, PTS in 90 kHz ticks,
  payload size) and the payload. Kinds: ``CONFIG`` first (JSON ``{"url", "video", "audio"}``),
  then ``VIDEO`` (an Annex B access unit), ``AUDIO`` (a raw AAC frame) and ``GAP`` (the parent
  dropped packets: wait for the next key frame). EOF: finish the stream and exit 0.
- stdout: JSON lines: ``{"ready": true}`` once imported, ``{"taken": n}`` (packets read so
  far) at most every ``TAKEN_S`` while packets come, ``{"live": true}`` when a session's first
  packet went out, and ``{"error": text}`` right before exiting with status 1.

A session starts at a key frame (audio only: the first packet) with timestamps from 0; a key
frame whose SPS/PPS differ from the session's (a new encoder after ``updatemixrecord``) closes
the session and opens a new connection from that frame, so the new sequence header is sent.

``rtmp://``: FLV, written by FFmpeg's own RTMP client. ``srt://``: MPEG-TS muxed into an SRT
caller connection of libsrt (:class:`~cloudrec.media.push.srt.SrtWriter`), which connects when
the session opens.
"""

from __future__ import annotations

import json
import signal
import struct
import sys
import time
from fractions import Fraction
from typing import IO, Any

import av

from cloudrec.lifelines import die_with_parent
from cloudrec.media.codecs import h264
from cloudrec.media.push.srt import PAYLOAD, SrtWriter

HEADER = struct.Struct("!BBqI")
CONFIG, VIDEO, AUDIO, GAP = 0, 1, 2, 3
FORMATS = {"rtmp": "flv", "srt": "mpegts"}  # URL scheme -> FFmpeg muxer
TAKEN_S = 0.25
TICKS = Fraction(1, 90_000)


def frame(kind: int, data: bytes, pts: int = 0, key: bool = False) -> bytes:
    """One message of the parent → child wire."""
    return HEADER.pack(kind, int(key), pts, len(data)) + data


class Pusher:
    """Mux the packets of one URL, session after session (see the module docstring)."""

    def __init__(self, url: str, *, video: bool, audio: bool, out: IO[str]) -> None:
        self.url, self.video, self.audio, self._out = url, video, audio, out
        self.format = FORMATS[url.split(":", 1)[0].lower()]
        self._container: Any = None
        self._writer: Any = None  # srt://: the SrtWriter the container writes into
        self._streams: dict[int, Any] = {}
        self._origin = 0
        self._params: tuple[bytes | None, bytes | None] | None = None
        self._waiting = video  # for a key frame (video), else for the first packet
        self._live = False  # the session's first packet went out

    def report(self, **message: Any) -> None:
        self._out.write(json.dumps(message) + "\n")
        self._out.flush()

    def gap(self) -> None:
        self._waiting = self.video

    def take(self, kind: int, data: bytes, pts: int, key: bool) -> None:
        if kind == VIDEO and key:
            found = h264.parameter_sets(data)
            if self._params is not None and found[0] is not None and found != self._params:
                self.close()  # a new encoder: a new session from this key frame
            if self._container is None:
                self._params = found if found[0] is not None else None
        if self._waiting:
            if self.video and not (kind == VIDEO and key):
                return
            self._waiting = False
        if self._container is None:
            self._open(data if self.video else None)
            self._origin = pts
        if pts < self._origin:
            return  # audio from before the session's first key frame
        packet = av.Packet(data)
        packet.stream = self._streams[kind]
        packet.time_base = TICKS
        packet.pts = packet.dts = pts - self._origin
        packet.is_keyframe = key
        first = not self._live
        self._container.mux(packet)  # the session's first packet connects
        if first:
            self._live = True
            self.report(live=True)

    def _open(self, keyframe: bytes | None) -> None:
        size = h264.picture_size(keyframe) if keyframe is not None else None
        if self.format == "mpegts":
            self._writer = SrtWriter(self.url)  # connects
            try:
                self._container = av.open(self._writer, "w", format=self.format,
                                          buffer_size=PAYLOAD)
            except BaseException:
                self._writer, writer = None, self._writer
                writer.close()
                raise
        else:
            self._container = av.open(self.url, "w", format=self.format)
        self._streams = {}
        self._live = False
        if self.video:
            width, height = size or (0, 0)
            self._streams[VIDEO] = self._container.add_mux_stream("h264", width=width,
                                                                  height=height)
        if self.audio:  # an unopened AAC context: its AudioSpecificConfig, nothing encoded
            self._streams[AUDIO] = self._container.add_stream("aac", rate=48_000,
                                                              layout="stereo")

    def close(self) -> None:
        container, self._container = self._container, None
        writer, self._writer = self._writer, None
        self._waiting = self.video
        try:
            if container is not None:
                container.close()
        finally:
            if writer is not None:
                writer.close()


def _read(stream: IO[bytes], size: int) -> bytes | None:
    data = stream.read(size)
    return data if data is not None and len(data) == size else None


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops it (EOF, or a kill)
    die_with_parent()
    stdin, stdout = sys.stdin.buffer, sys.stdout
    pusher: Pusher | None = None
    try:
        stdout.write(json.dumps({"ready": True}) + "\n")
        stdout.flush()
        taken, reported = 0, time.monotonic()
        while True:
            header = _read(stdin, HEADER.size)
            if header is None:
                break
            kind, key, pts, size = HEADER.unpack(header)
            data = _read(stdin, size) if size else b""
            if data is None:
                break
            if kind == CONFIG:
                config = json.loads(data)
                pusher = Pusher(config["url"], video=config["video"], audio=config["audio"],
                                out=stdout)
                continue
            if pusher is None:
                raise RuntimeError("no CONFIG message first")
            if kind == GAP:
                pusher.gap()
            else:
                pusher.take(kind, data, pts, bool(key))
            taken += 1
            now = time.monotonic()
            if now - reported >= TAKEN_S:
                pusher.report(taken=taken)
                reported = now
        if pusher is not None:
            pusher.close()
        return 0
    except Exception as exc:
        text = f"{type(exc).__name__}: {exc}"
        if pusher is not None:
            text = text.replace(pusher.url, "<url>")  # FFmpeg's errors name the URL
        try:
            stdout.write(json.dumps({"error": text}) + "\n")
            stdout.flush()
        except OSError:
            pass
        return 1


if __name__ == "__main__":
    sys.exit(main())
