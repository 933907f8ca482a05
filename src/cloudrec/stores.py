"""The node's shared stores, opened the same way by the front and by every worker process:
the task store and the callback outbox, in SQLite files under ``data_dir`` or, in a cluster,
in the PostgreSQL database ``database_url``."""

from __future__ import annotations

from cloudrec.callbacks import CallbackOutbox
from cloudrec.config import Settings
from cloudrec.db import open_database
from cloudrec.tasks import TaskStore


def open_stores(settings: Settings) -> tuple[TaskStore, CallbackOutbox]:
    if settings.database_url:
        db = open_database(settings.database_url)
        tasks = TaskStore(db, resid_ttl_s=settings.resid_ttl_s)
        outbox_db = db
    else:
        tasks = TaskStore(settings.data_dir / "tasks.sqlite3", resid_ttl_s=settings.resid_ttl_s)
        outbox_db = settings.data_dir / "callbacks.sqlite3"

    def secret_for(appid: int) -> str | None:
        app_cfg = settings.app(appid)
        return app_cfg.secret if app_cfg else None

    outbox = CallbackOutbox(outbox_db, secret_for, retry_for_s=settings.callback_retry_s)
    return tasks, outbox
