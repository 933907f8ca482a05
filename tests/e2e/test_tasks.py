"""The task store on SQLite and PostgreSQL: resid lifecycle, atomic claims across stores (as
across nodes), task owners, durability across reopen."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from cloudrec.errors import RecordingError
from cloudrec.tasks import Status, StopReason, Task, TaskStore


def create(store: TaskStore, resid: str, appid: int = 1, roomid: str = "r",
           owner: str | None = None) -> str:
    return store.create_task(appid=appid, resid=resid, roomid=roomid, uid="u", streamtype=2,
                             recordtype=0, request={"storagecfg": {"vender": 101}},
                             owner=owner).recordid


def race(n: int, work: Callable[[int], object]) -> list[object]:
    """Run ``work(i)`` in ``n`` threads released together; their results (or error codes)."""
    results: list[object] = []
    start = threading.Barrier(n)

    def run(i: int) -> None:
        start.wait()
        try:
            results.append(work(i))
        except RecordingError as exc:
            results.append(exc.code)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_resid_starts_one_recording(database: str) -> None:
    store = TaskStore(database)
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
    store.close()


def test_resid_of_another_app_is_unknown(database: str) -> None:
    store = TaskStore(database)
    resid = store.apply(1)
    with pytest.raises(RecordingError) as err:
        store.check_resid(2, resid)
    assert err.value.code == 4012
    with pytest.raises(RecordingError) as err:
        create(store, resid, appid=2)
    assert err.value.code == 4012
    store.close()


def test_expired_resid_cannot_start(database: str) -> None:
    store = TaskStore(database, resid_ttl_s=0)
    resid = store.apply(1)
    with pytest.raises(RecordingError) as err:
        create(store, resid)
    assert err.value.code == 4012
    store.close()


def test_concurrent_claims_start_exactly_one(database: str) -> None:
    store = TaskStore(database)
    resid = store.apply(1)
    results = race(16, lambda _i: create(store, resid))
    assert sum(isinstance(r, str) for r in results) == 1
    assert sorted(r for r in results if isinstance(r, int)) == [4011] * 15
    store.close()


def test_claims_from_separate_stores_start_exactly_one(database: str) -> None:
    """Each store has its own connection, as each node (or worker process) does."""
    stores = [TaskStore(database) for _ in range(4)]
    for _ in range(5):
        resid = stores[0].apply(1)
        results = race(8, lambda i, resid=resid: create(stores[i % 4], resid,
                                                         owner=f"node{i % 4}/w0"))
        winners = [r for r in results if isinstance(r, str)]
        assert len(winners) == 1, results
        assert sorted(r for r in results if isinstance(r, int)) == [4011] * 7
        task = stores[3].get(winners[0])
        assert task is not None and task.resid == resid and task.status == Status.INIT
    for store in stores:
        store.close()


def test_tasks_survive_reopen(database: str) -> None:
    store = TaskStore(database)
    recordid = create(store, store.apply(1))
    store.set_status(recordid, Status.RECORDING)
    store.set_progress(recordid, {"segments": 3})
    store.close()
    again = TaskStore(database)
    task = again.get(recordid)
    assert task is not None and task.status == Status.RECORDING and task.starttime > 0
    assert task.progress == {"segments": 3}
    assert [t.recordid for t in again.active_tasks()] == [recordid]
    again.set_status(recordid, Status.STOPPED, stopreason="idle")
    again.set_status(recordid, Status.STOPPED, stopreason="api")  # the first reason stays
    task = again.get(recordid)
    assert task is not None and task.stopreason == "idle" and task.stoptime >= task.starttime
    assert again.active_tasks() == []
    again.close()


def test_owners_and_rooms(database: str) -> None:
    store = TaskStore(database)
    a = create(store, store.apply(1), roomid="room1", owner="node1/w0")
    b = create(store, store.apply(1), roomid="room1")
    c = create(store, store.apply(1), roomid="room2", owner="node2/w1")
    d = create(store, store.apply(2), appid=2, roomid="room1", owner="node1/w0")
    assert store.get(b) is not None and store.get(b).owner is None  # type: ignore[union-attr]
    store.set_owner(b, "node1/w1")

    def ids(tasks: list[Task]) -> set[str]:
        return {t.recordid for t in tasks}

    assert ids(store.active_tasks("node1/w0")) == {a, d}
    assert ids(store.active_tasks("node1/w1")) == {b}
    assert ids(store.active_tasks()) == {a, b, c, d}
    assert ids(store.active_tasks_in_room(1, "room1")) == {a, b}
    assert ids(store.active_tasks_in_room(2, "room1")) == {d}
    store.set_status(a, Status.STOPPED, stopreason=StopReason.API)
    assert ids(store.active_tasks_in_room(1, "room1")) == {b}
    assert ids(store.active_tasks("node1/w0")) == {d}
    store.close()


def test_claim_task_is_exclusive(database: str) -> None:
    """Nodes taking over a dead node's task: one claim wins, the rest see it taken."""
    stores = [TaskStore(database) for _ in range(4)]
    recordid = create(stores[0], stores[0].apply(1), owner="dead/w0")
    stores[0].set_status(recordid, Status.RECORDING)
    results = race(12, lambda i: (i, stores[i % 4].claim_task(recordid, f"node{i}/w0", "dead/w0")))
    winners = [i for i, won in results if won]  # type: ignore[misc]
    assert len(winners) == 1
    task = stores[1].get(recordid)
    assert task is not None and task.owner == f"node{winners[0]}/w0"
    assert not stores[2].claim_task(recordid, "late/w0", "dead/w0")  # the expectation is stale
    assert stores[2].claim_task(recordid, "late/w0", task.owner)
    # An unowned task is claimed with expected_owner=None; a stopped one is not taken over.
    free = create(stores[0], stores[0].apply(1))
    assert stores[3].claim_task(free, "node3/w0", None)
    assert not stores[0].claim_task(free, "node0/w0", None)
    stores[0].set_status(free, Status.STOPPED, stopreason=StopReason.API)
    assert not stores[0].claim_task(free, "node0/w0", "node3/w0")
    for store in stores:
        store.close()


def test_list_tasks_filters_and_pages(database: str) -> None:
    store = TaskStore(database)
    made = [create(store, store.apply(1 + i % 2), appid=1 + i % 2, roomid=f"r{i % 3}")
            for i in range(7)]
    store.set_status(made[0], Status.STOPPED, stopreason=StopReason.API)
    newest_first = [t.recordid for t in store.list_tasks()]
    assert set(newest_first) == set(made)
    times = [t.createtime for t in store.list_tasks()]
    assert times == sorted(times, reverse=True)
    assert {t.appid for t in store.list_tasks(appid=2)} == {2}
    assert {t.roomid for t in store.list_tasks(roomid="r1")} == {"r1"}
    assert [t.recordid for t in store.list_tasks(active=False)] == [made[0]]
    assert made[0] not in {t.recordid for t in store.list_tasks(active=True)}
    page = store.list_tasks(limit=3)
    rest = store.list_tasks(before_ms=page[-1].createtime, limit=100)
    assert len(page) == 3 and all(t.createtime < page[-1].createtime for t in rest)
    store.close()
