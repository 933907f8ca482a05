"""A full disk under ``data_dir``: recognising it, and saying so.

The spool, the local store (vender 101) and the SQLite task store and outbox share
``data_dir``, so when its disk fills every one of them fails, each in its own words:
``OSError`` ENOSPC (or EDQUOT) from a file write, PyAV's errors wrapping it, SQLite's
``database or disk is full`` (SQLITE_FULL), PostgreSQL's ``disk_full`` (SQLSTATE 53100), and
cloudrec's own ``RecordingError``/``StorageError`` whose message carries the system's text.
:func:`is_disk_full` recognises each of them anywhere in an exception's chain of causes, or in
an error message already turned into text (a recording's ``error``).

The API answers a request that failed on a full disk with :class:`DiskFullError`: the seed's
2104 (HTTP 500) with a message that names the disk, instead of a bare "internal server error".
"""

from __future__ import annotations

import errno
import sqlite3

from cloudrec.errors import InternalError

_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_SQLITE_FULL = 13
_PG_DISK_FULL = "53100"
_TEXTS = ("no space left on device", "database or disk is full", "disk quota exceeded",
          "disk full")

MESSAGE = "internal server error: the server's disk is full (no space left on device)"


class DiskFullError(InternalError):
    """2104 naming the disk: what the API answers while the server's disk is full."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(f"{MESSAGE}: {detail}" if detail else MESSAGE)


def _one_is_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in _ERRNOS:
        return True
    if isinstance(exc, sqlite3.Error) and getattr(exc, "sqlite_errorcode", None) == _SQLITE_FULL:
        return True
    if getattr(exc, "sqlstate", None) == _PG_DISK_FULL:
        return True
    return is_disk_full_text(str(exc))


def is_disk_full_text(text: str | None) -> bool:
    lowered = (text or "").lower()
    return any(marker in lowered for marker in _TEXTS)


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc``, or an exception it was raised from or during, is a full disk."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if _one_is_full(current):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def api_error(exc: BaseException) -> InternalError:
    """The envelope's error for an unexpected exception in a request: 2104 either way, with a
    message that names the disk when that is what failed."""
    return DiskFullError() if is_disk_full(exc) else InternalError("internal server error")
