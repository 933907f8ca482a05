"""A worker's side of the wire: the ``/internal/{op}`` routes that run each operation on the
worker (see :mod:`cloudrec.workers.wire` for what travels)."""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from cloudrec.workers.wire import (
    ARGS_HEADER,
    SECRET_HEADER,
    check_op,
    decode_args,
    encode_error,
)


async def dispatch(worker: Any, op: str, args: dict[str, Any]) -> dict[str, Any]:
    """Run ``op`` on ``worker`` with the arguments as they came over the wire."""
    check_op(op)
    return dict(await getattr(worker, op)(**decode_args(op, args)))


def internal_router(worker_for: Callable[[], Any], secret: str) -> APIRouter:
    """``/internal/{op}`` for the worker ``worker_for()`` returns (None while it starts)."""
    router = APIRouter(include_in_schema=False)

    def admitted(request: Request) -> Any:
        """The worker, or the refusal: 401 without the internal secret, 2104 while the worker
        starts."""
        if not hmac.compare_digest(request.headers.get(SECRET_HEADER, ""), secret):
            return JSONResponse({"error": {"code": 1001, "message": "bad internal credential"}},
                                status_code=401)
        worker = worker_for()
        if worker is None:
            return JSONResponse({"error": {"code": 2104, "message": "worker starting",
                                           "closed": True}})
        return worker

    @router.post("/internal/ingest_stream")
    async def ingest_stream(request: Request) -> JSONResponse:
        """A publisher's byte stream: arguments in a header, the body read as it comes."""
        worker = admitted(request)
        if isinstance(worker, JSONResponse):
            return worker
        try:
            args = dict(json.loads(request.headers.get(ARGS_HEADER) or "{}"))
            return JSONResponse({"ok": await worker.ingest_stream(**args,
                                                                  chunks=request.stream())})
        except Exception as exc:
            return JSONResponse({"error": encode_error(exc)})

    @router.post("/internal/{op}")
    async def internal(op: str, request: Request) -> JSONResponse:
        worker = admitted(request)
        if isinstance(worker, JSONResponse):
            return worker
        try:
            args = await request.json()
            return JSONResponse({"ok": await dispatch(worker, op, dict(args))})
        except Exception as exc:  # every failure goes back to the front as a seed code
            return JSONResponse({"error": encode_error(exc)})

    return router
