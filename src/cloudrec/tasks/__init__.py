"""The task store and the task state machine."""

from cloudrec.tasks.states import ACTIVE, Status, StopReason
from cloudrec.tasks.store import Task, TaskStore

__all__ = ["ACTIVE", "Status", "StopReason", "Task", "TaskStore"]
