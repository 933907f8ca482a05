"""The task store: resids and recording tasks, durable across restarts, shared by a cluster.

SQLite in the data dir for one node (its worker processes share the file), PostgreSQL when
nodes form a cluster; both through :mod:`cloudrec.db`. Every call is a short statement or
transaction, fast enough to run on the event loop. State changes that must be atomic under
concurrent requests from any thread, process or node (claiming a resid, taking a task over)
are single conditional UPDATEs.

A task's ``owner`` names the worker running it (``"node1/w0"``): a node lists its own tasks to
resume them after a restart, and a node that takes over a dead node's tasks claims each with
:meth:`TaskStore.claim_task`, which only one claimant wins.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudrec.db import SQLITE, Database, Migration, Row, now_ms, open_database
from cloudrec.errors import RecordingError
from cloudrec.tasks.states import ACTIVE, Status

# Never edit a released step: append one. Step 1 is the schema from before migrations, in
# IF NOT EXISTS form, so task files made then are adopted with their rows. Times are BIGINT
# milliseconds (SQLite's INTEGER is 64-bit already; PostgreSQL's is not).
MIGRATIONS: list[Migration] = [
    """
CREATE TABLE IF NOT EXISTS resids (
    resid TEXT PRIMARY KEY,
    appid BIGINT NOT NULL,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    recordid TEXT
);
CREATE TABLE IF NOT EXISTS tasks (
    recordid TEXT PRIMARY KEY,
    appid BIGINT NOT NULL,
    roomid TEXT NOT NULL,
    resid TEXT NOT NULL,
    uid TEXT,
    streamtype INTEGER NOT NULL,
    recordtype INTEGER NOT NULL,
    status INTEGER NOT NULL,
    createtime BIGINT NOT NULL,
    starttime BIGINT NOT NULL DEFAULT 0,
    stoptime BIGINT NOT NULL DEFAULT 0,
    stopreason TEXT,
    error TEXT,
    request TEXT NOT NULL,
    progress TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS tasks_status ON tasks(status);
""",
    """
ALTER TABLE tasks ADD COLUMN owner TEXT;
CREATE INDEX IF NOT EXISTS tasks_owner ON tasks(owner);
CREATE INDEX IF NOT EXISTS tasks_room ON tasks(appid, roomid);
""",
    """
CREATE TABLE IF NOT EXISTS returned_segments (
    recordid TEXT NOT NULL,
    name TEXT NOT NULL,
    entry TEXT NOT NULL,
    PRIMARY KEY (recordid, name)
);
""",
]

_ACTIVE = tuple(int(s) for s in ACTIVE)
_ACTIVE_MARKS = ",".join("?" for _ in _ACTIVE)


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
    owner: str | None = None

    @property
    def active(self) -> bool:
        return self.status in ACTIVE


class TaskStore:
    """Resids and tasks in a SQLite file or a PostgreSQL database.

    ``target`` is a SQLite file path, a ``postgresql://`` URL or an open :class:`Database`
    (which the store then uses but does not close)."""

    STORE = "tasks"

    def __init__(self, target: Path | str | Database, resid_ttl_s: float = 300.0) -> None:
        self._owns_db = not isinstance(target, Database)
        self._db = open_database(target)
        self.path = Path(self._db.target) if self._db.dialect == SQLITE else None
        self.resid_ttl_ms = int(resid_ttl_s * 1000)
        self._db.migrate(self.STORE, MIGRATIONS)

    @property
    def database(self) -> Database:
        return self._db

    def close(self) -> None:
        if self._owns_db:
            self._db.close()

    # -- resids ---------------------------------------------------------------------------------

    def apply(self, appid: int) -> str:
        """A new resid: unguessable, valid ``resid_ttl_s``, good for one recording."""
        resid = f"{secrets.token_hex(30)}-{secrets.token_hex(8)}"
        created = now_ms()
        self._db.execute(
            "INSERT INTO resids (resid, appid, created_ms, expires_ms) VALUES (?, ?, ?, ?)",
            (resid, appid, created, created + self.resid_ttl_ms),
        )
        return resid

    def check_resid(self, appid: int, resid: str) -> None:
        """Raise 4012 (unknown, expired, stopped) or 4011 (already started a recording)."""
        row = self._db.fetchone(
            "SELECT r.expires_ms, r.recordid, t.status FROM resids r "
            "LEFT JOIN tasks t ON t.recordid = r.recordid WHERE r.resid = ? AND r.appid = ?",
            (resid, appid),
        )
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
        owner: str | None = None,
    ) -> Task:
        """Claim the resid and create the task in one transaction (4011/4012 on a lost race).

        The claim is a conditional UPDATE: of concurrent claims, on any node, one changes the
        row and the others find it taken (PostgreSQL re-checks the condition once the winner
        commits; SQLite serialises the transactions)."""
        recordid = secrets.token_hex(18)[:35]
        created = now_ms()
        with self._db.transaction() as db:
            claimed = db.execute(
                "UPDATE resids SET recordid = ? WHERE resid = ? AND appid = ? "
                "AND recordid IS NULL AND expires_ms > ?",
                (recordid, resid, appid, created),
            ) == 1
            if claimed:
                db.execute(
                    "INSERT INTO tasks (recordid, appid, roomid, resid, uid, streamtype, "
                    "recordtype, status, createtime, request, owner) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        recordid, appid, roomid, resid, uid, streamtype, recordtype,
                        int(Status.INIT), created, json.dumps(request), owner,
                    ),
                )
        if not claimed:
            self.check_resid(appid, resid)  # raises the precise 4011/4012
            raise RecordingError("resid is invalid", 4012)
        task = self.get(recordid)
        assert task is not None
        return task

    # -- tasks ----------------------------------------------------------------------------------

    def get(self, recordid: str) -> Task | None:
        row = self._db.fetchone("SELECT * FROM tasks WHERE recordid = ?", (recordid,))
        return None if row is None else _task(row)

    def active_tasks(self, owner: str | None = None) -> list[Task]:
        """Tasks still recording (or starting), oldest first; only ``owner``'s when given."""
        sql = f"SELECT * FROM tasks WHERE status IN ({_ACTIVE_MARKS})"
        args: list[Any] = list(_ACTIVE)
        if owner is not None:
            sql += " AND owner = ?"
            args.append(owner)
        rows = self._db.fetchall(sql + " ORDER BY createtime, recordid", args)
        return [_task(r) for r in rows]

    def active_tasks_in_room(self, appid: int, roomid: str) -> list[Task]:
        """The active tasks recording room ``roomid`` of app ``appid``, oldest first."""
        rows = self._db.fetchall(
            f"SELECT * FROM tasks WHERE appid = ? AND roomid = ? AND status IN ({_ACTIVE_MARKS}) "
            "ORDER BY createtime, recordid",
            [appid, roomid, *_ACTIVE],
        )
        return [_task(r) for r in rows]

    def list_tasks(self, *, appid: int | None = None, roomid: str | None = None,
                   active: bool | None = None, before_ms: int | None = None,
                   limit: int = 100) -> list[Task]:
        """Tasks newest first, filtered by app, room and whether they are active; pages go on
        with ``before_ms`` (the last page's oldest ``createtime``)."""
        where: list[str] = []
        args: list[Any] = []
        if appid is not None:
            where.append("appid = ?")
            args.append(appid)
        if roomid is not None:
            where.append("roomid = ?")
            args.append(roomid)
        if active is not None:
            where.append(f"status {'' if active else 'NOT '}IN ({_ACTIVE_MARKS})")
            args.extend(_ACTIVE)
        if before_ms is not None:
            where.append("createtime < ?")
            args.append(before_ms)
        sql = "SELECT * FROM tasks" + (" WHERE " + " AND ".join(where) if where else "")
        rows = self._db.fetchall(sql + " ORDER BY createtime DESC, recordid LIMIT ?",
                                 [*args, max(1, min(int(limit), 1000))])
        return [_task(r) for r in rows]

    def set_owner(self, recordid: str, owner: str | None) -> None:
        """Record which worker runs the task, unconditionally (its creator, or a restart of the
        same worker); taking over another worker's task is :meth:`claim_task`."""
        self._db.execute("UPDATE tasks SET owner = ? WHERE recordid = ?", (owner, recordid))

    def claim_task(self, recordid: str, owner: str, expected_owner: str | None) -> bool:
        """Make ``owner`` the task's owner if it is still active and still owned by
        ``expected_owner`` (``None``: by no one); whether this call won. Of concurrent claims
        with the same expectation, on any node, exactly one wins."""
        if expected_owner is None:
            cond, args = "owner IS NULL", [owner, recordid]
        else:
            cond, args = "owner = ?", [owner, recordid, expected_owner]
        changed = self._db.execute(
            f"UPDATE tasks SET owner = ? WHERE recordid = ? AND {cond} "
            f"AND status IN ({_ACTIVE_MARKS})",
            [*args, *_ACTIVE],
        )
        return changed == 1

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
        self._db.execute(f"UPDATE tasks SET {', '.join(sets)} WHERE recordid = ?", args)

    # -- segments a returning node stored for a task that went on elsewhere --------------------

    def return_segments(self, recordid: str, entries: list[dict[str, Any]]) -> None:
        """Hand the task's current owner segments a node that came back stored for it (each
        ``{"name", "index", "duration", "discontinuity", "date"}``); the owner lists them."""
        with self._db.transaction() as db:
            for entry in entries:
                db.execute("DELETE FROM returned_segments WHERE recordid = ? AND name = ?",
                           (recordid, entry["name"]))
                db.execute("INSERT INTO returned_segments (recordid, name, entry) "
                           "VALUES (?, ?, ?)", (recordid, entry["name"], json.dumps(entry)))

    def returned_segments(self, recordid: str) -> list[dict[str, Any]]:
        rows = self._db.fetchall("SELECT entry FROM returned_segments WHERE recordid = ?",
                                 (recordid,))
        return sorted((json.loads(r["entry"]) for r in rows), key=lambda e: e["index"])

    def forget_returned_segments(self, recordid: str, names: list[str]) -> None:
        """The owner's playlist lists ``names`` now."""
        for name in names:
            self._db.execute("DELETE FROM returned_segments WHERE recordid = ? AND name = ?",
                             (recordid, name))

    def set_progress(self, recordid: str, progress: dict[str, Any]) -> None:
        self._db.execute(
            "UPDATE tasks SET progress = ? WHERE recordid = ?", (json.dumps(progress), recordid)
        )


def _task(row: Row) -> Task:
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
        owner=row["owner"],
    )
