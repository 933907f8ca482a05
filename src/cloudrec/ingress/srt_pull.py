"""An ``srt://`` ingress: a caller connection through libsrt, MPEG-TS demuxed by PyAV.

``srt://HOST:PORT?streamid=...&latency=MS``: the URL's ``streamid`` (what the far listener
expects, e.g. MediaMTX's ``read:path``), ``latency`` (milliseconds) and ``passphrase`` are set
on the socket before it connects (:func:`cloudrec.ingest.libsrt.connect_url`). The
connection's messages feed :func:`cloudrec.ingress.demux.pull` as a file-like object; a
connection that gives nothing for ``READ_TIMEOUT_S`` counts as stalled.
"""

from __future__ import annotations

import ctypes
import threading
import time
from typing import TYPE_CHECKING

from cloudrec.ingest import libsrt

if TYPE_CHECKING:
    from cloudrec.ingress.runner import IngressRunner

CONNECT_TIMEOUT_MS = 5000
READ_TIMEOUT_S = 5.0
MESSAGE = 1500


class SrtCaller:
    """One caller connection, read as a file by PyAV."""

    def __init__(self, url: str, stop: threading.Event) -> None:
        self.stop = stop
        self.ended: str | None = None
        self.sock = libsrt.connect_url(url, timeout_ms=CONNECT_TIMEOUT_MS, recv_timeout_ms=500)
        self._buf = ctypes.create_string_buffer(MESSAGE)

    def read(self, size: int) -> bytes:
        so, last = libsrt.lib(), time.monotonic()
        while not self.stop.is_set():
            n = so.srt_recvmsg(self.sock, self._buf, len(self._buf))
            if n > 0:
                return self._buf.raw[:n]
            if n == libsrt.ERROR and libsrt.last_error()[0] in (libsrt.E_ASYNCRCV,
                                                                 libsrt.E_TIMEOUT):
                if time.monotonic() - last > READ_TIMEOUT_S:
                    self.ended = f"no data for {READ_TIMEOUT_S:.0f} s"
                    return b""
                continue
            self.ended = "the SRT connection closed"
            return b""
        return b""

    def close(self) -> None:
        libsrt.lib().srt_close(self.sock)


async def pull_srt(runner: IngressRunner, stop: threading.Event) -> str:
    import asyncio

    from cloudrec.ingress import demux

    caller = await asyncio.to_thread(SrtCaller, runner.url, stop)
    pub = runner.publisher()

    def on_open(opened: demux.Opened) -> None:
        pub.open(opened.kinds, opened.codecs, opened.source_codecs, one_timeline=True)

    try:
        reason = await demux.pull(caller, fmt="mpegts", stop=stop, on_open=on_open,
                                  on_frame=pub.write, paced=False,
                                  options={"probesize": "1000000",
                                           "analyzeduration": "1000000"})
    finally:
        caller.close()
    return caller.ended or reason
