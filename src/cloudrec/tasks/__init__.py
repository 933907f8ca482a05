"""The task store, the task state machine, pause state, and the answers the store gives."""

from cloudrec.tasks.service import TaskService
from cloudrec.tasks.states import ACTIVE, Status, StopReason
from cloudrec.tasks.store import Task, TaskStore

__all__ = ["ACTIVE", "Status", "StopReason", "Task", "TaskService", "TaskStore"]
