"""Ingresses and auto-record rules, durable across restarts and shared by a cluster.

Both tables live in the task store's database (:mod:`cloudrec.db`: SQLite for one node,
PostgreSQL for a cluster) under their own migrations. An ingress row holds its source URL as
given (credentials included: the worker needs them; every answer redacts them), its state as
the worker that runs it last wrote it, and ``owner``: the worker running it. A front that finds
an ingress whose owner is gone hands it to the room's new owner after winning
:meth:`IngressStore.claim` (a conditional UPDATE: of concurrent claimants, one wins).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

from cloudrec.db import Database, Migration, Row, now_ms

STATES = ("connecting", "active", "retrying", "error", "stopped")

MIGRATIONS: list[Migration] = [
    """
CREATE TABLE IF NOT EXISTS ingresses (
    ingressid TEXT PRIMARY KEY,
    appid BIGINT NOT NULL,
    roomid TEXT NOT NULL,
    uid TEXT,
    url TEXT NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    error TEXT,
    publishers TEXT NOT NULL DEFAULT '[]',
    since BIGINT NOT NULL,
    createtime BIGINT NOT NULL,
    reconnects BIGINT NOT NULL DEFAULT 0,
    owner TEXT,
    deleted INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS ingresses_room ON ingresses(appid, roomid);
CREATE INDEX IF NOT EXISTS ingresses_owner ON ingresses(owner);
CREATE TABLE IF NOT EXISTS autorecord_rules (
    ruleid TEXT PRIMARY KEY,
    appid BIGINT NOT NULL,
    pattern TEXT NOT NULL,
    streamtype INTEGER NOT NULL,
    request TEXT NOT NULL,
    createtime BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS autorecord_rules_app ON autorecord_rules(appid);
""",
]


@dataclass(frozen=True)
class Ingress:
    ingressid: str
    appid: int
    roomid: str
    uid: str | None
    url: str
    kind: str
    state: str
    error: str | None
    publishers: list[dict[str, Any]]
    since: int
    createtime: int
    reconnects: int
    owner: str | None
    deleted: bool

    def spec(self) -> dict[str, Any]:
        """What a worker needs to run it (``WorkerClient.ingress_start``)."""
        return {"ingressid": self.ingressid, "appid": self.appid, "roomid": self.roomid,
                "uid": self.uid, "url": self.url, "kind": self.kind}


@dataclass(frozen=True)
class Rule:
    ruleid: str
    appid: int
    pattern: str
    streamtype: int
    request: dict[str, Any]  # the rule's body as validated (recordtype, storagecfg, ...)
    createtime: int


def _ingress(row: Row) -> Ingress:
    return Ingress(row["ingressid"], int(row["appid"]), row["roomid"], row["uid"], row["url"],
                   row["kind"], row["state"], row["error"], json.loads(row["publishers"]),
                   int(row["since"]), int(row["createtime"]), int(row["reconnects"]),
                   row["owner"], bool(row["deleted"]))


def _rule(row: Row) -> Rule:
    return Rule(row["ruleid"], int(row["appid"]), row["pattern"], int(row["streamtype"]),
                json.loads(row["request"]), int(row["createtime"]))


class IngressStore:
    """Ingresses and rules in the database ``db`` (the task store's: ``TaskStore.database``)."""

    STORE = "ingress"

    def __init__(self, db: Database) -> None:
        self._db = db
        db.migrate(self.STORE, MIGRATIONS)

    # -- ingresses ------------------------------------------------------------------------------

    def create(self, *, appid: int, roomid: str, uid: str | None, url: str, kind: str) -> Ingress:
        ingressid = f"ing_{secrets.token_hex(12)}"
        now = now_ms()
        self._db.execute(
            "INSERT INTO ingresses (ingressid, appid, roomid, uid, url, kind, state, since, "
            "createtime) VALUES (?, ?, ?, ?, ?, ?, 'connecting', ?, ?)",
            (ingressid, appid, roomid, uid, url, kind, now, now))
        found = self.get(ingressid)
        assert found is not None
        return found

    def get(self, ingressid: str, appid: int | None = None) -> Ingress | None:
        row = self._db.fetchone("SELECT * FROM ingresses WHERE ingressid = ?", (ingressid,))
        if row is None or (appid is not None and int(row["appid"]) != appid):
            return None
        return _ingress(row)

    def ingresses(self, *, appid: int | None = None, roomid: str | None = None,
                  deleted: bool = False) -> list[Ingress]:
        sql = "SELECT * FROM ingresses WHERE 1 = 1"
        args: list[object] = []
        if not deleted:
            sql += " AND deleted = 0"
        if appid is not None:
            sql += " AND appid = ?"
            args.append(appid)
        if roomid is not None:
            sql += " AND roomid = ?"
            args.append(roomid)
        return [_ingress(r) for r in self._db.fetchall(sql + " ORDER BY createtime", args)]

    def owned_by(self, owner: str) -> list[Ingress]:
        rows = self._db.fetchall(
            "SELECT * FROM ingresses WHERE owner = ? AND deleted = 0", (owner,))
        return [_ingress(r) for r in rows]

    def claim(self, ingressid: str, owner: str, expected: str | None) -> bool:
        """Make ``owner`` run the ingress if its owner is still ``expected``; whether it won."""
        if expected is None:
            changed = self._db.execute(
                "UPDATE ingresses SET owner = ? WHERE ingressid = ? AND owner IS NULL "
                "AND deleted = 0", (owner, ingressid))
        else:
            changed = self._db.execute(
                "UPDATE ingresses SET owner = ? WHERE ingressid = ? AND owner = ? "
                "AND deleted = 0", (owner, ingressid, expected))
        return changed == 1

    def set_state(self, ingressid: str, state: str, error: str | None = None, *,
                  publishers: list[dict[str, Any]] | None = None,
                  reconnect: bool = False) -> None:
        """The state the worker reports (``since`` moves only when the state changes)."""
        assert state in STATES
        now = now_ms()
        self._db.execute(
            "UPDATE ingresses SET since = CASE WHEN state = ? THEN since ELSE ? END, "
            "state = ?, error = ?, publishers = ?, reconnects = reconnects + ? "
            "WHERE ingressid = ? AND deleted = 0",
            (state, now, state, error, json.dumps(publishers or []), 1 if reconnect else 0,
             ingressid))

    def set_publishers(self, ingressid: str, publishers: list[dict[str, Any]]) -> None:
        self._db.execute("UPDATE ingresses SET publishers = ? WHERE ingressid = ? AND deleted = 0",
                         (json.dumps(publishers), ingressid))

    def delete(self, ingressid: str) -> bool:
        """Mark it deleted and stopped; whether it was running (not deleted before)."""
        return self._db.execute(
            "UPDATE ingresses SET deleted = 1, state = 'stopped', error = 'deleted', "
            "publishers = '[]', since = ? WHERE ingressid = ? AND deleted = 0",
            (now_ms(), ingressid)) == 1

    def is_deleted(self, ingressid: str) -> bool:
        row = self._db.fetchone("SELECT deleted FROM ingresses WHERE ingressid = ?", (ingressid,))
        return row is None or bool(row["deleted"])

    def counts(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(kind, state) -> (ingresses, reconnects) over every ingress not deleted."""
        rows = self._db.fetchall(
            "SELECT kind, state, COUNT(*) AS n, SUM(reconnects) AS r FROM ingresses "
            "WHERE deleted = 0 GROUP BY kind, state")
        return {(r["kind"], r["state"]): (int(r["n"]), int(r["r"] or 0)) for r in rows}

    # -- rules ----------------------------------------------------------------------------------

    def add_rule(self, appid: int, pattern: str, streamtype: int,
                 request: dict[str, Any]) -> Rule:
        ruleid = f"rule_{secrets.token_hex(8)}"
        self._db.execute(
            "INSERT INTO autorecord_rules (ruleid, appid, pattern, streamtype, request, "
            "createtime) VALUES (?, ?, ?, ?, ?, ?)",
            (ruleid, appid, pattern, streamtype, json.dumps(request), now_ms()))
        return Rule(ruleid, appid, pattern, streamtype, request, now_ms())

    def rules(self, appid: int | None = None) -> list[Rule]:
        if appid is None:
            rows = self._db.fetchall("SELECT * FROM autorecord_rules ORDER BY createtime")
        else:
            rows = self._db.fetchall(
                "SELECT * FROM autorecord_rules WHERE appid = ? ORDER BY createtime", (appid,))
        return [_rule(r) for r in rows]

    def delete_rule(self, appid: int, ruleid: str) -> bool:
        return self._db.execute("DELETE FROM autorecord_rules WHERE ruleid = ? AND appid = ?",
                                (ruleid, appid)) == 1
