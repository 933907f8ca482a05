"""The SQLite task store: resid lifecycle, atomic claims, durability across reopen."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from cloudrec.errors import RecordingError
from cloudrec.tasks import Status, StopReason, TaskStore


def create(store: TaskStore, resid: str, appid: int = 1) -> str:
    return store.create_task(appid=appid, resid=resid, roomid="r", uid="u", streamtype=2,
                             recordtype=0, request={"storagecfg": {"vender": 101}}).recordid


def test_resid_starts_one_recording(tmp_path: Path) -> None:
    store = TaskStore(tmp_path / "t.db")
    resid = store.apply(1)
    store.check_resid(1, resid)
    recordid = create(store, resid)
    with pytest.raises(RecordingError) as err:
        store.check_resid(1, resid)
    assert err.value.code == 4011
    with pytest.raises(RecordingError) as err:
        create(store, resid)
    assert err.value.code == 4011
    store.set_status(recordid, Status.STOPPED, stopreason=StopReason.API)
    with pytest.raises(RecordingError) as err:
        store.check_resid(1, resid)
    assert err.value.code == 4012


def test_resid_of_another_app_is_unknown(tmp_path: Path) -> None:
    store = TaskStore(tmp_path / "t.db")
    resid = store.apply(1)
    with pytest.raises(RecordingError) as err:
        store.check_resid(2, resid)
    assert err.value.code == 4012


def test_concurrent_claims_start_exactly_one(tmp_path: Path) -> None:
    store = TaskStore(tmp_path / "t.db")
    resid = store.apply(1)
    results: list[object] = []

    def claim() -> None:
        try:
            results.append(create(store, resid))
        except RecordingError as exc:
            results.append(exc.code)

    threads = [threading.Thread(target=claim) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(isinstance(r, str) for r in results) == 1
    assert sorted(r for r in results if isinstance(r, int)) == [4011] * 15


def test_tasks_survive_reopen(tmp_path: Path) -> None:
    store = TaskStore(tmp_path / "t.db")
    recordid = create(store, store.apply(1))
    store.set_status(recordid, Status.RECORDING)
    store.set_progress(recordid, {"segments": 3})
    store.close()
    again = TaskStore(tmp_path / "t.db")
    task = again.get(recordid)
    assert task is not None and task.status == Status.RECORDING and task.starttime > 0
    assert task.progress == {"segments": 3}
    assert [t.recordid for t in again.active_tasks()] == [recordid]
    again.set_status(recordid, Status.STOPPED, stopreason="idle")
    again.set_status(recordid, Status.STOPPED, stopreason="api")  # the first reason stays
    task = again.get(recordid)
    assert task is not None and task.stopreason == "idle" and task.stoptime >= task.starttime
    assert again.active_tasks() == []
