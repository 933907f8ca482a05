"""The task store and the task state machine."""

from cloudrec.tasks.store import Task, TaskStore
from cloudrec.tasks.states import ACTIVE, Status, StopReason

__all__ = ["ACTIVE", "Status", "StopReason", "Task", "TaskStore"]
