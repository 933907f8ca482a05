"""traceId: echoed from the query string, else generated in the seed's format:
server IP + time of generation + an increasing sequence + the process id, all digits."""

from __future__ import annotations

import itertools
import os
import socket
import time

_seq = itertools.count(1)


def _ip_digits() -> str:
    try:
        ip = socket.gethostbyname(socket.gethostname())
    except OSError:
        ip = "127.0.0.1"
    return "".join(part.zfill(3) for part in ip.split("."))


_IP = _ip_digits()


def new_trace_id() -> str:
    return f"{_IP}{time.time_ns() // 1_000_000}{next(_seq) % 10000:04d}{os.getpid()}"
