"""Real PostgreSQL and Redis servers for tests, on free loopback ports in temporary dirs.

``start_postgres`` and ``start_redis`` start one server each and return its URL and a ``stop``
function: fixtures use them, and so do tests that start ``cloudrec serve`` processes against
one shared server. The fixtures:

- ``postgres_server`` (session): one PostgreSQL for the run; ``postgres_url`` (function): a
  fresh database on it per test, dropped afterwards.
- ``redis_server`` (session): one Redis for the run; ``redis_url`` (function): its database 0,
  flushed before the test.
- ``database`` (function, parametrized): a store target, once a SQLite file path and once a
  fresh PostgreSQL database's URL, so store tests run on both.

The servers are the Debian packages' binaries (``postgresql``, ``redis-server``; installed by
``scripts/setup-system.sh test``). Missing binaries fail the test with the package to install:
a database test that silently skips would hide that the cluster paths went untested.

PostgreSQL refuses to run as root, and tests often run as root (containers, CI): then its dir
is given to the ``postgres`` user and the server runs as that user. That dir is made in the
system temp dir, because pytest's per-user temp dirs are closed to other users. Durability is
off (``fsync=off``): a test database does not need to survive a power cut.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

Stop = Callable[[], None]


class ServiceUnavailable(RuntimeError):
    """A test service's binary is missing or it did not start."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if not found:
        raise ServiceUnavailable(
            "PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/postgres): install "
            "the Debian package `postgresql` (scripts/setup-system.sh test)")
    return Path(found[-1]).parent


def _redis_bin() -> str:
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None)
    if found is None:
        raise ServiceUnavailable(
            "redis-server not found: install the Debian package `redis-server` "
            "(scripts/setup-system.sh test)")
    return found


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _stopper(proc: subprocess.Popen[bytes], sig: int, cleanup: Path) -> Stop:
    def stop() -> None:
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(cleanup, ignore_errors=True)

    return stop


def start_postgres(tmpdir: Path | None = None) -> tuple[str, Stop]:
    """Start PostgreSQL on a free loopback port; its ``postgresql://`` URL (superuser
    ``postgres``, database ``postgres``, trust auth on loopback) and a ``stop`` that shuts it
    down and removes its files. ``tmpdir`` holds the server's dir unless the server must run as
    another user (as root), when the system temp dir does."""
    bindir = _postgres_bin()
    as_root = os.geteuid() == 0
    root = Path(tempfile.mkdtemp(prefix="cloudrec-pg-", dir=None if as_root else tmpdir))
    data, sockets, log = root / "data", root / "sock", root / "postgres.log"
    sockets.mkdir()
    user: dict[str, object] = {}
    if as_root:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root, ignore_errors=True)
            raise ServiceUnavailable(
                "running as root and there is no `postgres` user to run PostgreSQL as: install "
                "the Debian package `postgresql`") from None
        for path in (root, sockets):
            os.chown(path, pw.pw_uid, pw.pw_gid)
        user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    env = {**os.environ, "LC_ALL": "C.UTF-8"}
    init = subprocess.run(
        [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync",
         "-E", "UTF8", "--locale=C.UTF-8"],
        cwd=root, env=env, capture_output=True, **user,  # type: ignore[call-overload]
    )
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise ServiceUnavailable(f"initdb failed: {init.stderr.decode(errors='replace')[-2000:]}")
    port = free_port()
    with open(log, "wb") as out:
        if as_root:
            os.chown(log, pw.pw_uid, pw.pw_gid)
        proc = subprocess.Popen(
            [str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-h", "127.0.0.1",
             "-k", str(sockets), "-c", "fsync=off", "-c", "synchronous_commit=off",
             "-c", "full_page_writes=off", "-c", "max_connections=200"],
            cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
            **user,  # type: ignore[call-overload]
        )
    # SIGINT: PostgreSQL's "fast" shutdown (disconnects clients, no waiting for them).
    stop = _stopper(proc, signal.SIGINT, root)
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    import psycopg

    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            stop()
            raise ServiceUnavailable(f"postgres exited ({proc.returncode}):\n{_tail(log)}")
        try:
            psycopg.connect(url, connect_timeout=2).close()
            return url, stop
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                message = _tail(log)
                stop()
                raise ServiceUnavailable(
                    f"postgres did not accept connections:\n{message}") from None
            time.sleep(0.1)


def start_redis(tmpdir: Path | None = None) -> tuple[str, Stop]:
    """Start Redis on a free loopback port without persistence; its ``redis://`` URL and a
    ``stop`` that shuts it down and removes its dir."""
    binary = _redis_bin()
    root = Path(tempfile.mkdtemp(prefix="cloudrec-redis-", dir=tmpdir))
    port = free_port()
    log = root / "redis.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(root), "--daemonize", "no"],
            cwd=root, stdout=out, stderr=subprocess.STDOUT,
        )
    stop = _stopper(proc, signal.SIGTERM, root)
    url = f"redis://127.0.0.1:{port}/0"
    import redis

    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            stop()
            raise ServiceUnavailable(f"redis-server exited ({proc.returncode}):\n{_tail(log)}")
        try:
            client = redis.Redis.from_url(url, socket_connect_timeout=1)
            try:
                client.ping()
            finally:
                client.close()
            return url, stop
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                message = _tail(log)
                stop()
                raise ServiceUnavailable(f"redis-server did not answer:\n{message}") from None
            time.sleep(0.05)


def create_database(server_url: str, name: str | None = None) -> str:
    """A new, empty database on the server at ``server_url``; its URL."""
    import psycopg

    name = name or f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server_url.rsplit("/", 1)[0] + f"/{name}"


def drop_database(server_url: str, url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """One PostgreSQL server for the test session: the URL of its ``postgres`` database."""
    url, stop = start_postgres()
    try:
        yield url
    finally:
        stop()


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh database for this test: its ``postgresql://`` URL."""
    url = create_database(postgres_server)
    try:
        yield url
    finally:
        drop_database(postgres_server, url)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """One Redis server for the test session: its ``redis://`` URL."""
    url, stop = start_redis()
    try:
        yield url
    finally:
        stop()


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """The session's Redis, emptied for this test."""
    import redis

    client = redis.Redis.from_url(redis_server)
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store target, once per database cloudrec runs on: a SQLite file path (a node alone)
    and a fresh PostgreSQL database's URL (a cluster)."""
    if request.param == "sqlite":
        return str(tmp_path / "store.sqlite3")
    return str(request.getfixturevalue("postgres_url"))
