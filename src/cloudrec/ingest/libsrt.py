"""A ctypes binding to the few libsrt calls a listener and a caller need (libsrt 1.4/1.5, C API
of srt.h).

Debian's ``libsrt1.5-gnutls`` (FFmpeg's own dependency) or ``libsrt1.5-openssl`` provides the
library. A binding is used rather than GStreamer's ``srtsrc`` because the listener must read the
``streamid`` in ``srt_listen_callback`` and refuse a bad token with an SRT reject reason before
the connection is accepted, and hand each accepted socket to a demuxer in this process; ``srtsrc``
exposes neither the callback's verdict nor per-connection sockets to an application.

A caller (:func:`connect_url`) serves the ``srt://`` pull and the mix's ``srt://`` push: the URL's
``streamid``, ``latency`` (milliseconds) and ``passphrase`` are set on the socket before it
connects, as FFmpeg's ``srt://`` options do.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import socket
import struct
import threading
from urllib.parse import parse_qs, urlsplit

INVALID, ERROR = -1, -1
# SRT_SOCKOPT values (srt.h)
RCVSYN, RCVTIMEO, REUSEADDR, LATENCY, STREAMID, TRANSTYPE, PEERIDLETIMEO = 2, 14, 15, 23, 46, 50, 55
SNDTIMEO, PASSPHRASE, CONNTIMEO = 13, 26, 36
# reject reasons: SRT_REJC_PREDEFINED (1000) + an HTTP status
REJ_BAD_REQUEST, REJ_UNAUTHORIZED, REJ_OVERLOAD = 1400, 1401, 1503
EPOLL_IN, EPOLL_ERR = 0x1, 0x8
E_ASYNCSND, E_ASYNCRCV, E_TIMEOUT = 6001, 6002, 6003  # nothing done before SRTO_SND/RCVTIMEO
DEFAULT_PORT = 8890  # an srt:// URL without a port (MediaMTX's SRT port)
PAYLOAD = 1316  # a live-mode message: 7 MPEG-TS packets of 188 bytes
_NAMES = ("libsrt-gnutls.so.1.5", "libsrt-openssl.so.1.5", "libsrt.so.1.5", "libsrt.so.1.4")

ListenCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                                  ctypes.c_void_p, ctypes.c_char_p)


class SrtError(OSError):
    """A libsrt call failed; ``errno`` holds SRT's error code."""


class _EpollEvent(ctypes.Structure):
    _fields_ = [("fd", ctypes.c_int), ("events", ctypes.c_int)]


_lib: ctypes.CDLL | None = None
_available: bool | None = None
_lock = threading.Lock()


def _load() -> ctypes.CDLL:
    for name in _NAMES:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    name = ctypes.util.find_library("srt") or ""  # runs ldconfig or a compiler: last
    if name:
        return ctypes.CDLL(name)
    raise OSError("libsrt is not installed (Debian: libsrt1.5-gnutls)")


def available() -> bool:
    """Whether a libsrt loads here (found once); nothing is started (no ``srt_startup``)."""
    global _available
    if _lib is not None:
        return True
    if _available is None:
        try:
            _load()
            _available = True
        except OSError:
            _available = False
    return _available


def lib() -> ctypes.CDLL:
    """The loaded library, started up once; raises OSError when no libsrt is installed."""
    global _lib
    with _lock:
        if _lib is None:
            loaded = _load()
            _declare(loaded)
            if loaded.srt_startup() < 0:
                raise SrtError(f"srt_startup: {last_error()[1]}")
            loaded.srt_setloglevel(3)  # LOG_ERR: no warnings on stderr for every recv timeout
            _lib = loaded
        return _lib


def _declare(so: ctypes.CDLL) -> None:
    c_int, vp, i64 = ctypes.c_int, ctypes.c_void_p, ctypes.c_int64
    pint = ctypes.POINTER(c_int)
    for name, res, args in (
            ("srt_startup", c_int, ()), ("srt_setloglevel", None, (c_int,)),
            ("srt_create_socket", c_int, ()),
            ("srt_setsockflag", c_int, (c_int, c_int, vp, c_int)),
            ("srt_getsockflag", c_int, (c_int, c_int, vp, pint)),
            ("srt_bind", c_int, (c_int, vp, c_int)), ("srt_listen", c_int, (c_int, c_int)),
            ("srt_listen_callback", c_int, (c_int, ListenCallback, vp)),
            ("srt_accept", c_int, (c_int, vp, pint)),
            ("srt_recvmsg", c_int, (c_int, ctypes.c_char_p, c_int)),
            ("srt_sendmsg", c_int, (c_int, ctypes.c_char_p, c_int, c_int, c_int)),
            ("srt_connect", c_int, (c_int, vp, c_int)),
            ("srt_close", c_int, (c_int,)), ("srt_getlasterror", c_int, (pint,)),
            ("srt_getlasterror_str", ctypes.c_char_p, ()),
            ("srt_getsockname", c_int, (c_int, vp, pint)),
            ("srt_setrejectreason", c_int, (c_int, c_int)),
            ("srt_epoll_create", c_int, ()), ("srt_epoll_release", c_int, (c_int,)),
            ("srt_epoll_add_usock", c_int, (c_int, c_int, pint)),
            ("srt_epoll_remove_usock", c_int, (c_int, c_int)),
            ("srt_epoll_uwait", c_int, (c_int, ctypes.POINTER(_EpollEvent), c_int, i64))):
        fn = getattr(so, name)
        fn.restype, fn.argtypes = res, list(args)


def last_error() -> tuple[int, str]:
    so = lib() if _lib is None else _lib
    code = so.srt_getlasterror(None)
    return code, (so.srt_getlasterror_str() or b"").decode(errors="replace")


def check(result: int, what: str) -> int:
    if result == ERROR:
        code, text = last_error()
        raise SrtError(code, f"{what}: {text}")
    return result


def set_int(sock: int, option: int, value: int) -> None:
    v = ctypes.c_int(value)
    check(lib().srt_setsockflag(sock, option, ctypes.byref(v), 4), f"srt_setsockflag({option})")


def set_string(sock: int, option: int, value: str) -> None:
    raw = value.encode()
    check(lib().srt_setsockflag(sock, option, raw, len(raw)), f"srt_setsockflag({option})")


def get_string(sock: int, option: int) -> str:
    buf, size = ctypes.create_string_buffer(1024), ctypes.c_int(1024)
    check(lib().srt_getsockflag(sock, option, buf, ctypes.byref(size)), "srt_getsockflag")
    return buf.raw[:size.value].decode(errors="replace")


def sockaddr(host: str, port: int) -> bytes:
    """A ``struct sockaddr_in``/``sockaddr_in6`` for ``host:port``."""
    family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    ip = str(addr[0])
    if family == socket.AF_INET6:
        scope = int(addr[3]) if len(addr) > 3 else 0
        return (struct.pack("=HH", socket.AF_INET6, socket.htons(port)) + b"\0" * 4
                + socket.inet_pton(socket.AF_INET6, ip) + struct.pack("=I", scope))
    return struct.pack("=HH", socket.AF_INET, socket.htons(port)) + socket.inet_aton(ip) + b"\0" * 8


def parse_sockaddr(raw: bytes) -> tuple[str, int]:
    """``(address, port)`` of a sockaddr read from libsrt."""
    family, port = struct.unpack_from("=HH", raw)
    port = socket.ntohs(port)
    if family == socket.AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port
    return socket.inet_ntoa(raw[4:8]), port


def local_port(sock: int) -> int:
    buf, size = ctypes.create_string_buffer(128), ctypes.c_int(128)
    check(lib().srt_getsockname(sock, buf, ctypes.byref(size)), "srt_getsockname")
    return parse_sockaddr(buf.raw)[1]


def connect_url(url: str, *, timeout_ms: int, recv_timeout_ms: int | None = None,
                send_timeout_ms: int | None = None) -> int:
    """A live-mode caller socket connected to ``srt://HOST[:PORT]?streamid=..&latency=MS
    &passphrase=..`` (blocking, at most ``timeout_ms`` to connect); close it with
    ``srt_close``. Raises :class:`SrtError` (refused, timed out) or OSError (an unknown host)."""
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    so = lib()
    sock = check(so.srt_create_socket(), "srt_create_socket")
    try:
        set_int(sock, TRANSTYPE, 0)  # live
        set_int(sock, CONNTIMEO, timeout_ms)
        if recv_timeout_ms is not None:
            set_int(sock, RCVTIMEO, recv_timeout_ms)
        if send_timeout_ms is not None:
            set_int(sock, SNDTIMEO, send_timeout_ms)
        if "latency" in query:
            set_int(sock, LATENCY, int(query["latency"]))
        if "streamid" in query:
            set_string(sock, STREAMID, query["streamid"])
        if query.get("passphrase"):
            set_string(sock, PASSPHRASE, query["passphrase"])
        addr = sockaddr(parts.hostname or "", parts.port or DEFAULT_PORT)
        check(so.srt_connect(sock, addr, len(addr)), "srt_connect")
    except BaseException:
        so.srt_close(sock)
        raise
    return sock


def send_all(sock: int, data: bytes) -> None:
    """Send ``data`` as messages of at most :data:`PAYLOAD` bytes (blocking, up to the
    socket's ``SNDTIMEO`` each)."""
    so = lib()
    for start in range(0, len(data), PAYLOAD):
        chunk = data[start:start + PAYLOAD]
        check(so.srt_sendmsg(sock, chunk, len(chunk), -1, 0), "srt_sendmsg")


class Epoll:
    """``srt_epoll`` over a few SRT sockets, waited on with a timeout."""

    def __init__(self) -> None:
        self.eid = check(lib().srt_epoll_create(), "srt_epoll_create")

    def add(self, sock: int, events: int = EPOLL_IN | EPOLL_ERR) -> None:
        ev = ctypes.c_int(events)
        check(lib().srt_epoll_add_usock(self.eid, sock, ctypes.byref(ev)), "srt_epoll_add_usock")

    def remove(self, sock: int) -> None:
        """Stops watching ``sock`` (one that is closed already is no error)."""
        lib().srt_epoll_remove_usock(self.eid, sock)

    def wait(self, timeout_ms: int, most: int = 8) -> list[tuple[int, int]]:
        """The ready sockets and their events; [] after ``timeout_ms`` (or with none watched)."""
        events = (_EpollEvent * most)()
        n = lib().srt_epoll_uwait(self.eid, events, most, timeout_ms)
        return [(events[i].fd, events[i].events) for i in range(max(n, 0))]

    def close(self) -> None:
        lib().srt_epoll_release(self.eid)
