"""The floor of a remux driven from Python: PyAV listens for one pushed stream and writes it as
HLS, packet by packet, and does nothing else (no room, no durable segments, no task store).

``python bench/pyav_remux.py URL PLAYLIST``: ``rtmp://...`` is listened on by FFmpeg
(``listen=1``); ``srt://HOST:PORT...`` by libsrt through cloudrec's ctypes binding (PyAV's
FFmpeg has no SRT), one blocking ``srt_recvmsg`` per message, PyAV demuxing what they carry.
FFmpeg demuxes and muxes in C; what this adds to ``ffmpeg -c copy -f hls`` is Python's loop
over the packets (a PyAV ``Packet`` per packet, ``mux`` per packet; for SRT also a Python call
per 1316-byte message): the least any Python pipeline that touches every packet pays.
``bench_ingest.py`` runs N of these beside cloudrec and FFmpeg in the same windows.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any
from urllib.parse import urlsplit

import av


class SrtSource:
    """One SRT publisher accepted on the URL's port, read as a file (a message per call)."""

    def __init__(self, url: str) -> None:
        from cloudrec.ingest import libsrt

        parts = urlsplit(url)
        self.so = so = libsrt.lib()
        listener = libsrt.check(so.srt_create_socket(), "srt_create_socket")
        libsrt.set_int(listener, libsrt.LATENCY, 120)
        addr = libsrt.sockaddr(parts.hostname or "127.0.0.1", parts.port or 0)
        libsrt.check(so.srt_bind(listener, addr, len(addr)), "srt_bind")
        libsrt.check(so.srt_listen(listener, 1), "srt_listen")
        peer, size = ctypes.create_string_buffer(128), ctypes.c_int(128)
        self.sock = libsrt.check(so.srt_accept(listener, peer, ctypes.byref(size)), "accept")
        so.srt_close(listener)
        self.buf = ctypes.create_string_buffer(2048)

    def read(self, _size: int = -1) -> bytes:
        n = self.so.srt_recvmsg(self.sock, self.buf, 2048)
        return ctypes.string_at(self.buf, n) if n > 0 else b""


def main(url: str, playlist: str) -> None:
    source_arg: Any = url
    options, fmt = ({"listen": "1"}, None) if url.startswith("rtmp") else ({}, None)
    if url.startswith("srt"):
        source_arg, fmt = SrtSource(url), "mpegts"
    with av.open(source_arg, format=fmt, options=options) as source:
        streams = [s for s in source.streams if s.type in ("video", "audio")]
        with av.open(playlist, "w", format="hls",
                     options={"hls_time": "6", "hls_list_size": "0"}) as out:
            mapped = {s.index: out.add_stream_from_template(s) for s in streams}
            for packet in source.demux(*streams):
                if packet.dts is None:  # the demuxer's end-of-stream packet
                    continue
                packet.stream = mapped[packet.stream.index]
                out.mux(packet)


if __name__ == "__main__":
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "src"))
    try:
        main(sys.argv[1], sys.argv[2])
    except (av.FFmpegError, KeyboardInterrupt):
        pass
