"""The files of a recording that this node can read, for the console's player.

Two places hold them: the spool, ``{data_dir}/spool*/{recordid}/`` (each worker has its own
``spool`` directory), where the recorder writes the playlist and every segment until it is
stored; and, for local storage (vender 101), ``{data_dir}/storage/{bucket}/{prefix}``. While a
task records, its spool's playlist is the newest (the stored one follows a segment behind), and a
segment leaves the spool once stored, so a live recording's playlist comes from the spool and its
segments from wherever they are now. A recording in another store (S3, OSS, ...) is playable
only while its segments are in the spool, which is not for long: the player lists vender 101
recordings only.

Only names of the recording's own files are served (``{appid}_{roomid}_{recordid}...`` with
``.m3u8``, ``.ts``, for fMP4 ``.m4s`` and the ``_init.mp4`` sections, or a snapshot's
``.jpg``, no path separators), and every path is resolved and checked to lie inside its
directory, so a request can never read anything else.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from cloudrec.storage.base import VENDER_LOCAL
from cloudrec.tasks.store import Task

NAME = re.compile(r"[A-Za-z0-9_.@-]{1,400}\.(m3u8|ts|m4s|mp4|jpg)")
CONTENT_TYPES = {"m3u8": "application/vnd.apple.mpegurl", "ts": "video/mp2t",
                 "m4s": "video/iso.segment", "mp4": "video/mp4", "jpg": "image/jpeg"}


def basename(task: Task) -> str:
    """The name the recorder gives the task's playlist, without ``.m3u8``."""
    base = f"{task.appid}_{task.roomid}_{task.recordid}"
    return base if task.streamtype == 1 or not task.uid else f"{base}_{task.uid}"


def prefix(task: Task) -> str:
    items = (task.request.get("storagecfg") or {}).get("fileprefix") or []
    return "/".join(str(i) for i in items) + "/" if items else ""


def playable(task: Task) -> bool:
    return (task.request.get("storagecfg") or {}).get("vender") == VENDER_LOCAL


def _inside(base: Path, *parts: str) -> Path | None:
    """``base/parts`` if it exists as a file and resolves inside ``base``."""
    try:
        root = base.resolve()
        path = root.joinpath(*parts).resolve()
    except (OSError, ValueError):
        return None
    if not path.is_relative_to(root) or not path.is_file():
        return None
    return path


def locate(task: Task, name: str, data_dir: Path, storage: Path | None = None) -> Path | None:
    """The file ``name`` of the task's recording, or None when this node has no such file
    (``storage``: local storage's root, by default ``data_dir/storage``)."""
    if NAME.fullmatch(name) is None or not name.startswith(basename(task)):
        return None
    spooled = [p for d in sorted(data_dir.glob("spool*"))
               if (p := _inside(d, task.recordid, name)) is not None]
    stored: list[Path] = []
    cfg: dict[str, Any] = task.request.get("storagecfg") or {}
    if cfg.get("vender") == VENDER_LOCAL and isinstance(cfg.get("bucket"), str):
        storage = storage or data_dir / "storage"
        bucket = _inside_dir(storage, cfg["bucket"])
        if bucket is not None:
            found = _inside(bucket, *[p for p in prefix(task).split("/") if p], name)
            stored = [found] if found is not None else []
    if (name.endswith(".m3u8") and not task.active) or name.endswith(".jpg"):
        candidates = stored or spooled  # the ended playlist, a snapshot: the stored one
    else:
        candidates = spooled or stored
    return candidates[0] if candidates else None


def _inside_dir(base: Path, name: str) -> Path | None:
    try:
        root = base.resolve()
        path = (root / name).resolve()
    except (OSError, ValueError):
        return None
    return path if path.is_relative_to(root) and path != root else None
