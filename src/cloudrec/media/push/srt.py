"""The ``srt://`` side of a push: MPEG-TS muxed by PyAV into an SRT caller connection.

PyAV's own FFmpeg has no SRT, so the pusher muxes into :class:`SrtWriter`, a write-only file
(``av.open(writer, "w", format="mpegts", buffer_size=PAYLOAD)``) whose ``write`` sends what it
gets as live-mode messages of 1316 bytes (7 MPEG-TS packets of 188) with ``srt_sendmsg``, through
the ctypes binding :mod:`cloudrec.ingest.libsrt`. The URL is a caller's:
``srt://HOST:PORT?streamid=...&latency=MS&passphrase=...``.

Blocking calls (the connect, a send the far end does not take) release the GIL and are bounded
by ``CONNECT_TIMEOUT_MS`` and ``SEND_TIMEOUT_MS``; a peer that goes silent breaks the connection
after libsrt's peer idle timeout (5 s), and the next send raises.
"""

from __future__ import annotations

from cloudrec.ingest import libsrt

PAYLOAD = libsrt.PAYLOAD
CONNECT_TIMEOUT_MS = 3000
SEND_TIMEOUT_MS = 4000


def available() -> bool:
    """Whether this host can push to ``srt://`` (a libsrt loads)."""
    return libsrt.available()


class SrtWriter:
    """A file that PyAV writes MPEG-TS into, sent over one SRT caller connection.

    Whole messages go out as soon as they are complete; a tail shorter than a message waits for
    the next write, and :meth:`close` sends it. A failed send raises :class:`libsrt.SrtError`
    (through PyAV's ``mux``)."""

    def __init__(self, url: str) -> None:
        self.sock = libsrt.connect_url(url, timeout_ms=CONNECT_TIMEOUT_MS,
                                       send_timeout_ms=SEND_TIMEOUT_MS)
        self.closed = False
        self.sent = 0  # bytes
        self._tail = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:
        if self.closed:
            raise ValueError("write to a closed SRT connection")
        self._tail += data
        whole = len(self._tail) - len(self._tail) % PAYLOAD
        if whole:
            libsrt.send_all(self.sock, bytes(self._tail[:whole]))
            del self._tail[:whole]
            self.sent += whole
        return len(data)

    def close(self) -> None:
        """Send what is left and close the connection (errors while sending are ignored: the
        stream is over either way)."""
        if self.closed:
            return
        self.closed = True
        try:
            if self._tail:
                libsrt.send_all(self.sock, bytes(self._tail))
                self.sent += len(self._tail)
        except OSError:
            pass
        finally:
            self._tail.clear()
            libsrt.lib().srt_close(self.sock)
