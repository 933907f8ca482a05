"""The answers the task store alone can give, and the events that go with them.

A task is active in the store while its recording runs on some worker. Where no recording of
it runs (its worker is gone and no publisher came back yet), the verbs still answer from the
store: ``stoprecord`` ends it (``recording.stopped``), ``pauserecord`` / ``resumerecord`` write
the pause state into its progress (it resumes paused, or not, wherever it runs next),
``updatemixrecord`` answers 4014, ``queryrecord`` shows its stored progress. The worker that
runs recordings answers through the same object for the tasks it does not run, and adds the
live progress of those it does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from cloudrec.errors import RecordingError
from cloudrec.tasks.pause import PauseState
from cloudrec.tasks.states import Status, StopReason
from cloudrec.tasks.store import Task, TaskStore

Progress = Callable[[Task], dict[str, Any] | None]


class Outbox(Protocol):
    """Where callback events go (:class:`cloudrec.callbacks.CallbackOutbox`)."""

    def emit(self, url: str | None, event_type: str, *, appid: int, roomid: str,
             recordid: str, uid: str | None = None,
             data: dict[str, Any] | None = None) -> str | None: ...


def _stored(task: Task) -> None:
    return None


class TaskService:
    def __init__(self, tasks: TaskStore, outbox: Outbox | None = None) -> None:
        self.tasks = tasks
        self.outbox = outbox

    # -- events ---------------------------------------------------------------------------------

    def emit(self, task: Task, event_type: str, data: dict[str, Any]) -> None:
        """Queue a callback event of ``task`` (nothing without an outbox or a callbackurl)."""
        if self.outbox is not None:
            self.outbox.emit(task.request.get("callbackurl"), event_type, appid=task.appid,
                             roomid=task.roomid, recordid=task.recordid, uid=task.uid, data=data)

    def fail(self, task: Task, error: str, *, reported: str | None = None) -> None:
        """End ``task`` with reason error: status failed with ``error``, then the events
        ``recording.failed`` and ``recording.stopped`` carrying ``reported`` (default
        ``error``)."""
        self.tasks.set_status(task.recordid, Status.FAILED, stopreason="error", error=error)
        data = {"reason": "error", "error": error if reported is None else reported}
        self.emit(task, "recording.failed", data)
        self.emit(task, "recording.stopped", data)

    # -- the verbs, from the store ---------------------------------------------------------------

    def active_task(self, appid: int, roomid: str, recordid: str, resid: str) -> Task:
        """The active task the request names: 4013 when there is none, 4012 when ``resid``
        is not its resid."""
        task = self.tasks.get(recordid)
        if task is None or task.appid != appid or task.roomid != roomid or not task.active:
            raise RecordingError(f"recordid {recordid!r} does not exist", 4013)
        if task.resid != resid:
            raise RecordingError(f"resid does not belong to recordid {recordid!r}", 4012)
        return task

    def mixed_task(self, appid: int, req: Any) -> Task:
        """The active task an ``updatemixrecord`` names; 4019 when it is not a mix."""
        task = self.active_task(appid, req.roomid, req.recordid, req.resid)
        if task.streamtype != 1:
            raise RecordingError("recording task type is not mixed stream recording", 4019)
        return task

    def stop(self, appid: int, req: Any) -> str:
        """stoprecord of a task with no running recording."""
        return self.end(self.active_task(appid, req.roomid, req.recordid, req.resid))

    def end(self, task: Task) -> str:
        """Stop an active task that runs nowhere: status stopped (reason api), the event."""
        self.tasks.set_status(task.recordid, Status.STOPPED, stopreason=str(StopReason.API))
        self.emit(task, "recording.stopped", {"reason": str(StopReason.API)})
        return task.recordid

    def pause(self, appid: int, req: Any, *, resume: bool = False) -> dict[str, Any]:
        """pauserecord / resumerecord of a task with no running recording."""
        return self.pause_stored(self.active_task(appid, req.roomid, req.recordid, req.resid),
                                 resume=resume)

    def pause_stored(self, task: Task, *, resume: bool) -> dict[str, Any]:
        """Write the pause state into the task's progress (4004 when it is in that state)."""
        pause = PauseState.from_progress(task.progress)
        if resume:
            pause.resume(task.recordid)
        else:
            pause.pause(task.recordid)
        state = pause.progress()
        self.tasks.set_progress(task.recordid, {**task.progress, **state})
        return {"recordid": task.recordid, **state}

    def update(self, appid: int, req: Any) -> str:
        """updatemixrecord of a task with no running recording: 4019 or 4014."""
        self.mixed_task(appid, req)
        raise mix_not_running()

    def query(self, appid: int, roomid: str, recordid: str,
              progress: Progress = _stored) -> dict[str, Any]:
        """queryrecord: the task described with ``progress(task)`` (default: its stored
        progress); 4013 for an unknown task, and for a stopped one with its description as
        ``data``."""
        task = self.tasks.get(recordid)
        if task is None or task.appid != appid or task.roomid != roomid:
            raise RecordingError(f"recordid {recordid!r} does not exist", 4013)
        data = self.describe(task, progress(task))
        if not task.active:
            error = RecordingError(
                f"recordid {recordid!r} does not exist: the task has stopped "
                f"(reason: {task.stopreason or 'unknown'})",
                4013,
            )
            error.data = data
            raise error
        return data

    def describe(self, task: Task, progress: dict[str, Any] | None = None) -> dict[str, Any]:
        """A task as queryrecord shows it: its columns and ``progress`` (default: the
        stored one)."""
        return {
            "recordid": task.recordid,
            "appid": task.appid,
            "roomid": task.roomid,
            "status": int(task.status),
            "createtime": task.createtime,
            "starttime": task.starttime,
            # beyond the seed
            "uid": task.uid,
            "streamtype": task.streamtype,
            "recordtype": task.recordtype,
            "stoptime": task.stoptime,
            "stopreason": task.stopreason,
            "error": task.error,
            "files": [],  # a task that ended before it listed its files
            **(task.progress if progress is None else progress),
        }

    def files(self, recordid: str) -> list[dict[str, Any]]:
        """The file list a task saved as it ended (or as it was last saved)."""
        task = self.tasks.get(recordid)
        return list((task.progress if task else {}).get("files") or [])


def mix_not_running() -> RecordingError:
    """4014: the task is a mix, but its recording runs nowhere it can be updated."""
    return RecordingError("the mixed recording is not running", 4014)
