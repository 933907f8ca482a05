"""SQLite as cloudrec's stores use it (the task store, the callback outbox): one connection per
store shared across threads behind the store's lock, autocommit with explicit transactions,
WAL with synchronous=NORMAL (a commit survives a process crash; a power cut may lose the last
few), so a write costs no fsync on the event loop's path."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path


def open_db(path: Path, schema: str) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(schema)
    return db


def now_ms() -> int:
    return time.time_ns() // 1_000_000
