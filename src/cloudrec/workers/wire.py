"""What travels between a front and a worker's ``/internal/{op}`` routes.

Every internal call is ``POST /internal/{op}`` with a JSON body, authenticated by the cluster
secret in ``X-Cloudrec-Internal``. The answer is ``{"ok": result}`` or ``{"error": {...}}``
carrying the :class:`CloudrecError`'s code, message and data, so the front answers exactly what
the worker decided. A worker that cannot be reached raises :class:`WorkerUnavailable`.

A request the front validated travels as its model's JSON dump under ``req`` and is rebuilt
into the same model on the worker: the raw body is parsed once, in the front.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel

from cloudrec.errors import CloudrecError, InternalError, InvalidParameter
from cloudrec.models import StartRecordRequest, StopRecordRequest, UpdateMixRecordRequest

log = logging.getLogger(__name__)

SECRET_HEADER = "X-Cloudrec-Internal"
OPS = ("publish", "unpublish", "start", "stop", "pause", "resume", "update", "query", "adopt",
       "status", "publications", "play", "stop_play", "room_publishers", "ingress_start",
       "ingress_stop", "ingest_stream")
#: Streaming operations: their arguments travel as JSON in :data:`ARGS_HEADER` and the request
#: body is the stream itself (``/internal/ingest_stream``).
ARGS_HEADER = "X-Cloudrec-Args"
#: The operations whose ``req`` argument is a validated request, and its model.
REQUESTS: dict[str, type[BaseModel]] = {
    "start": StartRecordRequest, "stop": StopRecordRequest, "pause": StopRecordRequest,
    "resume": StopRecordRequest, "update": UpdateMixRecordRequest,
}


class WorkerUnavailable(InternalError):
    """The worker did not answer: it died, hangs or its node is gone."""


def check_op(op: str) -> None:
    if op not in OPS:
        raise InvalidParameter("op", f"unknown internal operation {op!r}")


def encode_args(args: dict[str, Any]) -> dict[str, Any]:
    """``args`` as JSON: a request model as its dump (by the names it is read with)."""
    return {name: value.model_dump(mode="json", by_alias=True)
            if isinstance(value, BaseModel) else value for name, value in args.items()}


def decode_args(op: str, args: dict[str, Any]) -> dict[str, Any]:
    """The arguments :func:`encode_args` sent, with ``req`` rebuilt into its model."""
    model = REQUESTS.get(op)
    if model is not None and "req" in args:
        args = {**args, "req": model.model_validate(args["req"])}
    return args


def encode_error(exc: Exception) -> dict[str, Any]:
    if isinstance(exc, CloudrecError):
        return {"code": exc.code, "message": exc.message, "data": exc.data,
                "field": getattr(exc, "field", None)}
    if isinstance(exc, RuntimeError) and "closed" in str(exc):
        return {"code": 2104, "message": "shutting down", "closed": True}
    log.exception("internal call failed")
    return {"code": 2104, "message": f"internal error: {type(exc).__name__}: {exc}"}


def decode_error(error: dict[str, Any]) -> CloudrecError:
    if error.get("closed"):
        return WorkerUnavailable("the worker is shutting down")
    exc: CloudrecError
    if error.get("field") is not None and error["code"] == 2101:
        exc = InvalidParameter.__new__(InvalidParameter)
        CloudrecError.__init__(exc, error["message"], 2101)
        exc.field = error["field"]
    else:
        exc = CloudrecError(error["message"], int(error["code"]))
    if error.get("data") is not None:
        exc.data = error["data"]
    return exc
