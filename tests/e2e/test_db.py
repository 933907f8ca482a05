"""The store interface on SQLite and PostgreSQL: statements, transactions, migrations (also
from files made before migrations existed, and from nodes starting at once), reconnecting."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import psycopg
import pytest

from cloudrec.callbacks import CallbackOutbox
from cloudrec.db import POSTGRESQL, SQLITE, Database, now_ms, open_database, to_pyformat
from cloudrec.tasks import Status, TaskStore

# The exact schemas cloudrec created before migrations (tasks/store.py and callbacks/outbox.py).
OLD_TASKS_SCHEMA = """
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

OLD_CALLBACKS_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    appid INTEGER NOT NULL,
    url TEXT NOT NULL,
    body BLOB NOT NULL,
    created_ms INTEGER NOT NULL,
    next_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS events_next ON events(next_ms);
"""


def test_placeholders_translate_outside_quotes() -> None:
    assert to_pyformat("SELECT * FROM t WHERE a = ? AND b = '?' AND c LIKE '5%' AND d % 2 = ?") == (
        "SELECT * FROM t WHERE a = %s AND b = '?' AND c LIKE '5%%' AND d %% 2 = %s")


def test_statements_rows_and_transactions(database: str) -> None:
    db = open_database(database)
    assert db.dialect == (POSTGRESQL if database.startswith("postgresql://") else SQLITE)
    blob = {SQLITE: "BLOB", POSTGRESQL: "BYTEA"}[db.dialect]
    db.migrate("demo", [f"CREATE TABLE items (id TEXT PRIMARY KEY, n BIGINT NOT NULL, b {blob})"])
    big = now_ms() * 1000  # beyond 32 bits
    assert db.execute("INSERT INTO items (id, n, b) VALUES (?, ?, ?)", ("a", big, b"\x00\xff")) == 1
    assert db.execute("INSERT INTO items (id, n) VALUES (?, ?)", ("b", 1)) == 1
    row = db.fetchone("SELECT id, n, b FROM items WHERE id = ? AND '?' = '?'", ("a",))
    assert row is not None
    assert (row["id"], row["n"], bytes(row["b"])) == ("a", big, b"\x00\xff")
    assert (row[0], row[1]) == ("a", big) and row.keys() == ["id", "n", "b"]
    assert db.fetchone("SELECT id FROM items WHERE id = ?", ("zz",)) is None
    assert [r["id"] for r in db.fetchall("SELECT id FROM items ORDER BY id")] == ["a", "b"]
    assert db.execute("UPDATE items SET n = n + 1 WHERE n < ?", (10,)) == 1

    with db.transaction():
        db.execute("UPDATE items SET n = 100 WHERE id = ?", ("b",))
        db.execute("INSERT INTO items (id, n) VALUES (?, ?)", ("c", 3))
    with pytest.raises(ZeroDivisionError):
        with db.transaction():
            db.execute("UPDATE items SET n = 200 WHERE id = ?", ("b",))
            db.execute("DELETE FROM items WHERE id = ?", ("c",))
            raise ZeroDivisionError
    rows = db.fetchall("SELECT id, n FROM items WHERE id <> ? ORDER BY id", ("a",))
    assert [(r["id"], r["n"]) for r in rows] == [("b", 100), ("c", 3)]
    db.close()


def test_migrations_apply_once_and_in_order(database: str) -> None:
    steps = [
        "CREATE TABLE notes (id INTEGER NOT NULL, text TEXT)",
        "INSERT INTO notes (id, text) VALUES (1, 'first')",
        "ALTER TABLE notes ADD COLUMN extra TEXT; INSERT INTO notes (id, extra) VALUES (2, 'x')",
    ]
    db = open_database(database)
    assert db.migrate("notes", steps[:2]) == 2
    assert db.migrate("notes", steps[:2]) == 2
    assert db.migrate("notes", steps) == 3
    assert db.migrate("notes", steps) == 3
    assert [r["id"] for r in db.fetchall("SELECT id FROM notes ORDER BY id")] == [1, 2]
    versions = db.fetchall(
        "SELECT version FROM schema_migrations WHERE store = ? ORDER BY version", ("notes",))
    assert [r["version"] for r in versions] == [1, 2, 3]
    with pytest.raises(RuntimeError, match="newer"):
        db.migrate("notes", steps[:1])
    db.close()


def test_concurrent_migrations_apply_each_step_once(database: str) -> None:
    """Nodes (or worker processes) starting at once against one database."""
    steps = [
        "CREATE TABLE counter (n INTEGER NOT NULL)",
        "INSERT INTO counter (n) VALUES (1)",
        "INSERT INTO counter (n) VALUES (2)",
    ]
    dbs = [Database(database) for _ in range(6)]
    start = threading.Barrier(len(dbs))
    errors: list[BaseException] = []

    def run(db: Database) -> None:
        start.wait()
        try:
            db.migrate("counter", steps)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(db,)) for db in dbs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(r["n"] for r in dbs[0].fetchall("SELECT n FROM counter")) == [1, 2]
    for db in dbs:
        db.close()


def test_files_from_before_migrations_keep_their_rows(tmp_path: Path) -> None:
    created = now_ms() - 60_000
    old = sqlite3.connect(tmp_path / "tasks.sqlite3", isolation_level=None)
    old.execute("PRAGMA journal_mode=WAL")
    old.executescript(OLD_TASKS_SCHEMA)
    old.execute("INSERT INTO resids (resid, appid, created_ms, expires_ms, recordid) "
                "VALUES ('res1', 7, ?, ?, 'rec1')", (created, created + 300_000))
    old.execute(
        "INSERT INTO tasks (recordid, appid, roomid, resid, uid, streamtype, recordtype, status, "
        "createtime, starttime, request, progress) VALUES "
        "('rec1', 7, 'room', 'res1', 'u', 2, 0, ?, ?, ?, '{\"a\": 1}', '{\"segments\": 4}')",
        (int(Status.RECORDING), created, created + 10),
    )
    old.close()
    old = sqlite3.connect(tmp_path / "callbacks.sqlite3", isolation_level=None)
    old.executescript(OLD_CALLBACKS_SCHEMA)
    old.execute("INSERT INTO events (id, appid, url, body, created_ms, next_ms) "
                "VALUES ('ev1', 7, 'http://x.invalid/', ?, ?, ?)",
                (b'{"id":"ev1"}', created, created))
    old.close()

    store = TaskStore(tmp_path / "tasks.sqlite3")
    task = store.get("rec1")
    assert task is not None and task.status == Status.RECORDING and task.owner is None
    assert task.request == {"a": 1} and task.progress == {"segments": 4}
    assert task.starttime == created + 10
    assert [t.recordid for t in store.active_tasks()] == ["rec1"]
    assert store.claim_task("rec1", "node1/w0", None)
    assert [t.recordid for t in store.active_tasks("node1/w0")] == ["rec1"]
    store.close()
    again = TaskStore(tmp_path / "tasks.sqlite3")  # migrated once; reopening changes nothing
    assert again.get("rec1").owner == "node1/w0"  # type: ignore[union-attr]
    versions = again.database.fetchall("SELECT store, version FROM schema_migrations")
    assert sorted((r["store"], r["version"]) for r in versions) == [
        ("tasks", 1), ("tasks", 2), ("tasks", 3)]
    again.close()

    outbox = CallbackOutbox(tmp_path / "callbacks.sqlite3", {7: "s"}.get)
    assert outbox.pending() == 1
    row = outbox._db.fetchone("SELECT body FROM events WHERE id = ?", ("ev1",))
    assert row is not None and bytes(row["body"]) == b'{"id":"ev1"}'


def test_reconnects_after_the_server_drops_the_connection(postgres_url: str) -> None:
    db = Database(postgres_url)
    db.migrate("demo", ["CREATE TABLE t (n INTEGER NOT NULL)"])
    db.execute("INSERT INTO t (n) VALUES (?)", (1,))
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    time.sleep(0.1)
    assert db.fetchone("SELECT COUNT(*) AS n FROM t")["n"] == 1  # type: ignore[index]
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    time.sleep(0.1)
    with db.transaction():  # a transaction starts on a fresh connection too
        db.execute("INSERT INTO t (n) VALUES (?)", (2,))
    assert db.fetchone("SELECT COUNT(*) AS n FROM t")["n"] == 2  # type: ignore[index]
    db.close()
