"""The kinds of source an ingress pulls, each a coroutine that runs one connection (see
:data:`cloudrec.ingress.runner.Source`): it opens its publisher(s) once media is known, writes
frames, and returns why the connection ended or raises what failed.

- ``rtsp``, ``rtmp``, ``http`` (HLS, MP4, FLV): FFmpeg's demuxers through PyAV
  (:mod:`cloudrec.ingress.demux`); a file over HTTP is read at its own pace;
- ``srt``: a caller connection through libsrt, MPEG-TS demuxed by PyAV
  (:mod:`cloudrec.ingress.srt_pull`);
- ``whep``: a recvonly WebRTC session (:mod:`cloudrec.webrtc.whep_pull`);
- ``janus``: a mirror of a Janus VideoRoom, each of its publishers forwarded by Janus as
  plain RTP (:mod:`cloudrec.ingress.janus`).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from cloudrec.errors import InvalidParameter

if TYPE_CHECKING:
    from cloudrec.ingress.runner import IngressRunner, Source

OPEN_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 5.0


async def pyav_source(runner: IngressRunner, stop: threading.Event) -> str:
    from cloudrec.ingress import demux

    pub = runner.publisher()

    def on_open(opened: demux.Opened) -> None:
        pub.open(opened.kinds, opened.codecs, opened.source_codecs, one_timeline=True)

    return await demux.pull(runner.url, stop=stop, on_open=on_open, on_frame=pub.write,
                            open_timeout_s=OPEN_TIMEOUT_S, read_timeout_s=READ_TIMEOUT_S,
                            paced=runner.kind == "http")


async def srt_source(runner: IngressRunner, stop: threading.Event) -> str:
    from cloudrec.ingress.srt_pull import pull_srt

    return await pull_srt(runner, stop)


async def whep_source(runner: IngressRunner, stop: threading.Event) -> str:
    from cloudrec.webrtc.whep_pull import pull_whep

    return await pull_whep(runner, stop)


async def janus_source(runner: IngressRunner, stop: threading.Event) -> str:
    from cloudrec.ingress.janus import pull_janus

    return await pull_janus(runner, stop)


def source_for(kind: str) -> Source:
    sources: dict[str, Source] = {"rtsp": pyav_source, "rtmp": pyav_source, "http": pyav_source,
                                  "srt": srt_source, "whep": whep_source, "janus": janus_source}
    try:
        return sources[kind]
    except KeyError:
        raise InvalidParameter("url", f"no source of kind {kind!r}") from None
