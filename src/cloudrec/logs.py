"""Logging of ``cloudrec serve`` and its worker processes: ``log_format = "text"`` (the
default, for people) or ``"json"`` (one JSON object per line, for a log pipeline).

A JSON line holds ``time`` (UTC, ISO 8601 with milliseconds), ``level``, ``logger`` and
``message``, then every field the call site passed with ``extra=`` (a recording's events carry
``event``, ``recordid``, ``appid``, ``roomid``, ``uid`` and what the event is about), the
process's own fields (``worker`` in a worker process) and, for an exception, ``exception`` with
its traceback. Values JSON cannot hold are written as their ``str()``.

Every logger goes through the root handler, uvicorn's included (``uvicorn_log_config``), so
one stream has one format.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any

FORMATS = ("text", "json")

# What every LogRecord has; anything else on a record came from ``extra=``.
# uvicorn's ``color_message`` is its message with terminal colours: not for a JSON line.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    def __init__(self, static: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.static = dict(static or {})

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **self.static,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and key not in line:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, default=str, ensure_ascii=False)


def configure(level: str = "info", fmt: str = "text", *, tag: str = "",
              static: dict[str, Any] | None = None) -> None:
    """Log to stderr at ``level`` in ``fmt``; ``tag`` goes before the logger's name in text
    lines (``w1``: a worker), ``static`` into every JSON line."""
    if fmt not in FORMATS:
        raise ValueError(f"log_format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(static))
    else:
        prefix = f"{tag} " if tag else ""
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per internal call otherwise
    logging.getLogger("aioice").setLevel(logging.WARNING)  # one line per ICE candidate pair


def uvicorn_log_config() -> dict[str, Any]:
    """uvicorn's loggers, without handlers of their own: their lines reach the root handler
    (and its format); access lines stay off below ``info``, as uvicorn does."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "loggers": {name: {"handlers": [], "propagate": True}
                    for name in ("uvicorn", "uvicorn.error", "uvicorn.access")},
    }
