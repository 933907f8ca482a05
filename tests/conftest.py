"""The test tree's top-level conftest.

- ``tests/unit``: fast, in-process tests (no servers, no WebRTC, no external binaries).
- ``tests/e2e``: end-to-end tests: WebRTC peers, HTTP servers, ``cloudrec serve`` processes,
  FFmpeg, Chromium, PostgreSQL and Redis, a cluster.

Each test gets the ``unit`` or ``e2e`` marker from its folder, so ``pytest -m unit`` selects the
same tests as ``pytest tests/unit``. Tests run in parallel (pytest-xdist); each worker is its own
process with its own PostgreSQL and Redis (session fixtures of ``tests.services``), and nothing
is written under the repository: a test that leaves a ``data`` dir in the working directory fails
the run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["tests.services"]

TESTS = Path(__file__).resolve().parent
_DATA = Path.cwd() / "data"
_DATA_EXISTED = _DATA.exists()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.path)).resolve()
        if path.is_relative_to(TESTS) and path.relative_to(TESTS).parts[0] in ("unit", "e2e"):
            item.add_marker(path.relative_to(TESTS).parts[0])


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when a test wrote the default ``./data`` dir of the working directory."""
    if not _DATA_EXISTED and _DATA.exists():
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        print(f"\nA test created {_DATA}: tests must keep their files in a temporary dir")
