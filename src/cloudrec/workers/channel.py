"""How a front reaches a worker: a direct call in the same process, or HTTP to the worker's
``/internal/*`` routes (another process of this node, or a worker of another node).

Every internal call is ``POST /internal/{op}`` with a JSON body, authenticated by the cluster
secret in ``X-Cloudrec-Internal``. The answer is ``{"ok": result}`` or ``{"error": {...}}``
carrying the :class:`CloudrecError`'s code, message and data, so the front answers exactly what
the worker decided. A worker that cannot be reached raises :class:`WorkerUnavailable`.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any, Callable, Protocol

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from cloudrec.errors import CloudrecError, InternalError, InvalidParameter

log = logging.getLogger(__name__)

SECRET_HEADER = "X-Cloudrec-Internal"
OPS = ("publish", "unpublish", "start", "stop", "pause", "resume", "update", "query", "adopt",
       "status", "publications")


class WorkerUnavailable(InternalError):
    """The worker did not answer: it died, hangs or its node is gone."""


class WorkerClient(Protocol):
    async def call(self, op: str, timeout: float = 30.0, **args: Any) -> dict[str, Any]: ...

    async def close(self) -> None: ...


def _encode_error(exc: Exception) -> dict[str, Any]:
    if isinstance(exc, CloudrecError):
        return {"code": exc.code, "message": exc.message, "data": getattr(exc, "data", None),
                "field": getattr(exc, "field", None)}
    if isinstance(exc, RuntimeError) and "closed" in str(exc):
        return {"code": 2104, "message": "shutting down", "closed": True}
    log.exception("internal call failed")
    return {"code": 2104, "message": f"internal error: {type(exc).__name__}: {exc}"}


def _decode_error(error: dict[str, Any]) -> CloudrecError:
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
        exc.data = error["data"]  # type: ignore[attr-defined]
    return exc


async def dispatch(worker: Any, op: str, args: dict[str, Any]) -> dict[str, Any]:
    if op not in OPS:
        raise InvalidParameter("op", f"unknown internal operation {op!r}")
    return dict(await getattr(worker, op)(**args))


class LocalWorkerClient:
    """The worker lives in this process (``workers = 1``): a plain call, errors as raised."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker

    async def call(self, op: str, timeout: float = 30.0, **args: Any) -> dict[str, Any]:
        return await dispatch(self.worker, op, args)

    async def close(self) -> None:
        pass


class HttpWorkerClient:
    def __init__(self, url: str, secret: str) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.AsyncClient(headers={SECRET_HEADER: secret},
                                       limits=httpx.Limits(max_connections=64))

    async def call(self, op: str, timeout: float = 30.0, **args: Any) -> dict[str, Any]:
        try:
            r = await self._http.post(f"{self.url}/internal/{op}", json=args, timeout=timeout)
            answer = r.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise WorkerUnavailable(f"worker at {self.url} did not answer ({type(exc).__name__})") from exc
        if "error" in answer:
            raise _decode_error(answer["error"])
        return dict(answer["ok"])

    async def close(self) -> None:
        await self._http.aclose()


def internal_router(worker_for: Callable[[], Any], secret: str) -> APIRouter:
    """``/internal/{op}`` for the worker ``worker_for()`` returns (None while it starts)."""
    router = APIRouter(include_in_schema=False)

    @router.post("/internal/{op}")
    async def internal(op: str, request: Request) -> JSONResponse:
        if not hmac.compare_digest(request.headers.get(SECRET_HEADER, ""), secret):
            return JSONResponse({"error": {"code": 1001, "message": "bad internal credential"}},
                                status_code=401)
        worker = worker_for()
        if worker is None:
            return JSONResponse({"error": {"code": 2104, "message": "worker starting",
                                           "closed": True}})
        try:
            args = await request.json()
            return JSONResponse({"ok": await dispatch(worker, op, dict(args))})
        except Exception as exc:  # every failure goes back to the front as a seed code
            return JSONResponse({"error": _encode_error(exc)})

    return router
