"""One store interface over SQLite (one node) and PostgreSQL (a cluster).

The task store and the callback outbox talk to a :class:`Database`, opened by
:func:`open_database` from a SQLite file path or a ``postgresql://`` URL. Each store keeps one
connection, shared across threads behind a lock, in autocommit mode: a single statement is its
own transaction, and :meth:`Database.transaction` groups statements explicitly. State changes
that must be atomic across threads, processes and nodes are single conditional UPDATEs, which
both databases execute atomically (PostgreSQL re-checks the WHERE clause on the row it locked).

SQL is written once, with ``?`` placeholders, and translated for psycopg (``%s``). Rows answer
both ``row[0]`` and ``row["column"]``.

SQLite: WAL with synchronous=NORMAL (a commit survives a process crash; a power cut may lose
the last few), so a write costs no fsync on the event loop's path, and a ``busy_timeout``,
because a node's worker processes share one file: a writer waits for another process's write
instead of failing. Transactions start with ``BEGIN IMMEDIATE`` so they take the write lock
up front and never fail half-way on a lock upgrade.

PostgreSQL: psycopg 3, synchronous; a connection the server dropped (restart, failover, idle
timeout) is reopened once, before a transaction or on a statement's failure outside one.

Schema changes are migrations: each store declares an ordered list of steps and
:meth:`Database.migrate` applies the ones not yet recorded in ``schema_migrations`` in one
transaction, serialised across nodes (SQLite's write lock; a PostgreSQL advisory lock), so two
nodes starting at once apply each step once. A store's first step is its original schema in
``CREATE ... IF NOT EXISTS`` form, so files made before migrations existed keep their rows.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

SQLITE = "sqlite"
POSTGRESQL = "postgresql"

# A migration step: SQL for both databases, or ``{"sqlite": ..., "postgresql": ...}`` where the
# types differ (BLOB / BYTEA). Several statements are separated by ``;``.
Migration = str | Mapping[str, str]

# pg_advisory_xact_lock key that serialises migrations across nodes ("cloudrec" in ASCII).
_MIGRATION_LOCK = 0x636C6F7564726563

_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    store TEXT NOT NULL,
    version INTEGER NOT NULL,
    applied_ms BIGINT NOT NULL,
    PRIMARY KEY (store, version)
)
"""


class Row(tuple):
    """A result row: a tuple that is also addressable by column name."""

    _index: Mapping[str, int]

    def __new__(cls, values: Sequence[Any], index: Mapping[str, int]) -> Row:
        row = super().__new__(cls, values)
        row._index = index
        return row

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._index)

    def as_dict(self) -> dict[str, Any]:
        return {name: tuple.__getitem__(self, i) for name, i in self._index.items()}


@lru_cache(maxsize=64)
def _columns(names: tuple[str, ...]) -> Mapping[str, int]:
    return {name: i for i, name in enumerate(names)}


def _sqlite_row(cursor: sqlite3.Cursor, values: tuple[Any, ...]) -> Row:
    return Row(values, _columns(tuple(d[0] for d in cursor.description)))


def _pg_row_factory(cursor: Any) -> Any:
    index = _columns(tuple(c.name for c in cursor.description or ()))
    return lambda values: Row(values, index)


@lru_cache(maxsize=512)
def to_pyformat(sql: str) -> str:
    """``?`` placeholders to psycopg's ``%s`` (and a literal ``%`` to ``%%``), outside quotes."""
    out: list[str] = []
    quote: str | None = None
    for ch in sql:
        if quote is not None:
            if ch == quote:
                quote = None
            out.append("%%" if ch == "%" else ch)
        elif ch in ("'", '"'):
            quote = ch
            out.append(ch)
        elif ch == "?":
            out.append("%s")
        elif ch == "%":
            out.append("%%")
        else:
            out.append(ch)
    return "".join(out)


def _statements(script: str) -> list[str]:
    """A migration script's statements (DDL here never has ``;`` inside a literal)."""
    return [s.strip() for s in script.split(";") if s.strip()]


class Database:
    """One connection to SQLite or PostgreSQL, shared across threads behind a lock."""

    def __init__(self, target: str | Path, *, busy_timeout_s: float = 10.0) -> None:
        self.target = str(target)
        self.busy_timeout_s = busy_timeout_s
        self.dialect = POSTGRESQL if _is_postgres_url(self.target) else SQLITE
        # Re-entrant: a transaction holds it while its statements take it again.
        self._lock = threading.RLock()
        self._in_transaction = False
        self._conn: Any = self._connect()

    # -- connections ----------------------------------------------------------------------------

    def _connect(self) -> Any:
        if self.dialect == POSTGRESQL:
            import psycopg

            return psycopg.connect(self.target, autocommit=True, row_factory=_pg_row_factory,
                                   connect_timeout=max(1, int(self.busy_timeout_s)))
        path = Path(self.target)
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None,
                               timeout=self.busy_timeout_s)
        # busy_timeout first: switching to WAL needs a lock another process may hold briefly.
        conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.row_factory = _sqlite_row
        return conn

    def _pg_alive(self) -> Any:
        """The PostgreSQL connection, reopened when the server dropped it."""
        if self._conn.closed or self._conn.broken:
            self._conn.close()
            self._conn = self._connect()
        return self._conn

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- statements -----------------------------------------------------------------------------

    def _run(self, sql: str, params: Sequence[Any]) -> Any:
        """Execute one statement and return its cursor (the caller holds the lock)."""
        if self.dialect == SQLITE:
            return self._conn.execute(sql, tuple(params))
        import psycopg

        query = to_pyformat(sql)
        if self._in_transaction:
            return self._conn.execute(query, tuple(params))
        conn = self._pg_alive()
        try:
            return conn.execute(query, tuple(params))
        except psycopg.OperationalError:
            if not conn.broken:
                raise
            # The server closed the connection (restart, failover, idle timeout): one fresh
            # try. Should only the reply have been lost, the statement runs twice: the stores'
            # conditional UPDATEs then find their work done, and an INSERT of a fresh key
            # fails on its duplicate instead of writing it twice.
            conn.close()
            self._conn = self._connect()
            return self._conn.execute(query, tuple(params))

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; the number of rows it changed."""
        with self._lock:
            return int(self._run(sql, params).rowcount)

    def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        with self._lock:
            return self._run(sql, params).fetchone()

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self._lock:
            return list(self._run(sql, params).fetchall())

    def executescript(self, script: str) -> None:
        """Run ``;``-separated statements without parameters (inside the caller's transaction
        if there is one: sqlite3's own executescript would commit it first)."""
        with self._lock:
            for statement in _statements(script):
                self._run(statement, ())

    @contextmanager
    def transaction(self) -> Iterator[Database]:
        """Statements in the block commit together, or roll back on an exception. Holds the
        lock throughout, so other threads of this process wait; other processes wait on the
        database (SQLite's write lock, PostgreSQL's row locks)."""
        with self._lock:
            if self._in_transaction:
                raise RuntimeError("transactions do not nest")
            # BEGIN goes through _run: on PostgreSQL a dropped connection is reopened here,
            # before anything of the transaction is lost.
            self._run("BEGIN IMMEDIATE" if self.dialect == SQLITE else "BEGIN", ())
            self._in_transaction = True
            try:
                yield self
            except BaseException:
                self._in_transaction = False
                self._rollback()
                raise
            self._in_transaction = False
            try:
                self._conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise

    def _rollback(self) -> None:
        """End a failed transaction; nothing to do when the connection went with it."""
        try:
            if self.dialect == SQLITE:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
            elif not (self._conn.closed or self._conn.broken):
                self._conn.execute("ROLLBACK")
        except Exception:  # noqa: BLE001 - the transaction's own error is the one to raise
            pass

    # -- migrations -----------------------------------------------------------------------------

    def migrate(self, store: str, steps: Sequence[Migration]) -> int:
        """Apply ``store``'s steps not yet applied, in order, in one transaction; the version
        the store is at afterwards (the number of steps). Steps already released never change:
        a change is a new step at the end."""
        with self.transaction():
            if self.dialect == POSTGRESQL:
                # Before creating the table: concurrent CREATE TABLE IF NOT EXISTS on
                # PostgreSQL can still collide in the catalog.
                self._run("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
            self._run(_MIGRATIONS_TABLE, ())
            row = self._run(
                "SELECT MAX(version) AS version FROM schema_migrations WHERE store = ?", (store,)
            ).fetchone()
            current = int(row["version"] or 0)
            if current > len(steps):
                raise RuntimeError(
                    f"{self.target}: store {store!r} is at schema version {current}, newer than "
                    f"this cloudrec knows ({len(steps)}); upgrade cloudrec"
                )
            for version, step in enumerate(steps[current:], start=current + 1):
                script = step if isinstance(step, str) else step[self.dialect]
                self.executescript(script)
                self._run(
                    "INSERT INTO schema_migrations (store, version, applied_ms) VALUES (?, ?, ?)",
                    (store, version, now_ms()),
                )
        return len(steps)


def _is_postgres_url(target: str) -> bool:
    return target.startswith(("postgresql://", "postgres://"))


def open_database(target: str | Path | Database, **kwargs: Any) -> Database:
    """A :class:`Database` for a SQLite file path or a ``postgresql://`` URL (a Database is
    returned as it is)."""
    if isinstance(target, Database):
        return target
    return Database(target, **kwargs)


def now_ms() -> int:
    return time.time_ns() // 1_000_000
