"""The node's shared stores, opened the same way by the front and by every worker process:
the task store and the callback outbox, in SQLite files under ``data_dir`` or, in a cluster,
in the PostgreSQL database ``database_url`` (one connection shared by both)."""

from __future__ import annotations

from dataclasses import dataclass

from cloudrec.callbacks import CallbackOutbox
from cloudrec.config import Settings
from cloudrec.db import Database, open_database
from cloudrec.tasks import TaskStore


@dataclass
class Stores:
    tasks: TaskStore
    outbox: CallbackOutbox
    shared: Database | None = None

    async def close(self) -> None:
        await self.outbox.close()
        self.tasks.close()
        if self.shared is not None:  # a store given a Database leaves closing it to its opener
            self.shared.close()


def open_stores(settings: Settings) -> Stores:
    def secret_for(appid: int) -> str | None:
        app_cfg = settings.app(appid)
        return app_cfg.secret if app_cfg else None

    if settings.database_url:
        db = open_database(settings.database_url)
        return Stores(TaskStore(db, resid_ttl_s=settings.resid_ttl_s),
                      CallbackOutbox(db, secret_for, retry_for_s=settings.callback_retry_s), db)
    return Stores(
        TaskStore(settings.data_dir / "tasks.sqlite3", resid_ttl_s=settings.resid_ttl_s),
        CallbackOutbox(settings.data_dir / "callbacks.sqlite3", secret_for,
                       retry_for_s=settings.callback_retry_s))
