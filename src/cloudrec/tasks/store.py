"""SQLite task store: resids and recording tasks, durable across restarts.

One connection guarded by a lock; every call is a short transaction (WAL, synchronous=NORMAL),
fast enough to run on the event loop. State changes that must be atomic under concurrent
requests (claiming a resid) are single conditional UPDATEs.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudrec.db import now_ms, open_db
from cloudrec.errors import RecordingError
from cloudrec.tasks.states import ACTIVE, Status

_SCHEMA = """
CREATE TABLE IF NOT EXISTS resids (
    resid TEXT PRIMARY KEY,
    appid INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    recordid TEXT
);
CREATE TABLE IF NOT EXISTS tasks (
    recordid TEXT PRIMARY KEY,
    appid INTEGER NOT NULL,
    roomid TEXT NOT NULL,
    resid TEXT NOT NULL,
    uid TEXT,
    streamtype INTEGER NOT NULL,
    recordtype INTEGER NOT NULL,
    status INTEGER NOT NULL,
    createtime INTEGER NOT NULL,
    starttime INTEGER NOT NULL DEFAULT 0,
    stoptime INTEGER NOT NULL DEFAULT 0,
    stopreason TEXT,
    error TEXT,
    request TEXT NOT NULL,
    progress TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS tasks_status ON tasks(status);
"""


@dataclass(frozen=True)
class Task:
    recordid: str
    appid: int
    roomid: str
    resid: str
    uid: str | None
    streamtype: int
    recordtype: int
    status: Status
    createtime: int
    starttime: int
    stoptime: int
    stopreason: str | None
    error: str | None
    request: dict[str, Any]
    progress: dict[str, Any]

    @property
    def active(self) -> bool:
        return self.status in ACTIVE


class TaskStore:
    def __init__(self, path: Path, resid_ttl_s: float = 300.0) -> None:
        self.path = path
        self.resid_ttl_ms = int(resid_ttl_s * 1000)
        self._lock = threading.Lock()
        self._db = open_db(path, _SCHEMA)
        self._db.row_factory = sqlite3.Row

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- resids ---------------------------------------------------------------------------------

    def apply(self, appid: int) -> str:
        """A new resid: unguessable, valid ``resid_ttl_s``, good for one recording."""
        resid = f"{secrets.token_hex(30)}-{secrets.token_hex(8)}"
        created = now_ms()
        with self._lock:
            self._db.execute(
                "INSERT INTO resids (resid, appid, created_ms, expires_ms) VALUES (?, ?, ?, ?)",
                (resid, appid, created, created + self.resid_ttl_ms),
            )
        return resid

    def check_resid(self, appid: int, resid: str) -> None:
        """Raise 4012 (unknown, expired, stopped) or 4011 (already started a recording)."""
        with self._lock:
            row = self._db.execute(
                "SELECT r.expires_ms, r.recordid, t.status FROM resids r "
                "LEFT JOIN tasks t ON t.recordid = r.recordid WHERE r.resid = ? AND r.appid = ?",
                (resid, appid),
            ).fetchone()
        if row is None:
            raise RecordingError(f"resid {resid!r} is unknown", 4012)
        if row["recordid"] is not None:
            if row["status"] is not None and Status(row["status"]) in ACTIVE:
                raise RecordingError(
                    f"resid already started recording {row['recordid']}; apply for a new resid",
                    4011,
                )
            raise RecordingError("resid was used by a recording that has stopped", 4012)
        if row["expires_ms"] <= now_ms():
            raise RecordingError("resid has expired (valid 5 minutes); apply for a new one", 4012)

    def create_task(
        self,
        *,
        appid: int,
        resid: str,
        roomid: str,
        uid: str | None,
        streamtype: int,
        recordtype: int,
        request: dict[str, Any],
    ) -> Task:
        """Claim the resid and create the task in one transaction (4011/4012 on a lost race)."""
        recordid = secrets.token_hex(18)[:35]
        created = now_ms()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cur = self._db.execute(
                    "UPDATE resids SET recordid = ? WHERE resid = ? AND appid = ? "
                    "AND recordid IS NULL AND expires_ms > ?",
                    (recordid, resid, appid, created),
                )
                if cur.rowcount != 1:
                    self._db.execute("ROLLBACK")
                    claimed = True
                else:
                    claimed = False
                    self._db.execute(
                        "INSERT INTO tasks (recordid, appid, roomid, resid, uid, streamtype, "
                        "recordtype, status, createtime, request) VALUES (?,?,?,?,?,?,?,?,?,?)",
                        (
                            recordid, appid, roomid, resid, uid, streamtype, recordtype,
                            int(Status.INIT), created, json.dumps(request),
                        ),
                    )
                    self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        if claimed:
            self.check_resid(appid, resid)  # raises the precise 4011/4012
            raise RecordingError("resid is invalid", 4012)
        task = self.get(recordid)
        assert task is not None
        return task

    # -- tasks ----------------------------------------------------------------------------------

    def get(self, recordid: str) -> Task | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM tasks WHERE recordid = ?", (recordid,)).fetchone()
        return None if row is None else _task(row)

    def active_tasks(self) -> list[Task]:
        marks = ",".join("?" for _ in ACTIVE)
        with self._lock:
            rows = self._db.execute(
                f"SELECT * FROM tasks WHERE status IN ({marks}) ORDER BY createtime",
                [int(s) for s in ACTIVE],
            ).fetchall()
        return [_task(r) for r in rows]

    def set_status(
        self,
        recordid: str,
        status: Status,
        *,
        stopreason: str | None = None,
        error: str | None = None,
    ) -> None:
        sets = ["status = ?"]
        args: list[Any] = [int(status)]
        if status == Status.RECORDING:
            sets.append("starttime = CASE WHEN starttime = 0 THEN ? ELSE starttime END")
            args.append(now_ms())
        if status in (Status.STOPPED, Status.FAILED):
            sets.append("stoptime = ?")
            args.append(now_ms())
        if stopreason is not None:
            sets.append("stopreason = COALESCE(stopreason, ?)")
            args.append(stopreason)
        if error is not None:
            sets.append("error = ?")
            args.append(error)
        args.append(recordid)
        with self._lock:
            self._db.execute(f"UPDATE tasks SET {', '.join(sets)} WHERE recordid = ?", args)

    def set_progress(self, recordid: str, progress: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE tasks SET progress = ? WHERE recordid = ?", (json.dumps(progress), recordid)
            )


def _task(row: sqlite3.Row) -> Task:
    return Task(
        recordid=row["recordid"],
        appid=row["appid"],
        roomid=row["roomid"],
        resid=row["resid"],
        uid=row["uid"],
        streamtype=row["streamtype"],
        recordtype=row["recordtype"],
        status=Status(row["status"]),
        createtime=row["createtime"],
        starttime=row["starttime"],
        stoptime=row["stoptime"],
        stopreason=row["stopreason"],
        error=row["error"],
        request=json.loads(row["request"]),
        progress=json.loads(row["progress"]),
    )
