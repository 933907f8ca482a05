"""The seed's five endpoints, and ``listrecord``, ``pauserecord`` and ``resumerecord`` beyond
the seed. Thin: authenticate, rate-limit, validate, call the front (which runs the verb on the
worker that owns the room), and shape the seed's envelope ``{"code", "message", "traceId",
...}``.

Checks run in the seed's order: auth → rate limit → validation → the service's own
checks (resid, room, recordid, task type). Every answer is counted for ``/metrics`` by endpoint
and seed code, with its latency.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from cloudrec.api.auth import authenticate
from cloudrec.api.front import Front
from cloudrec.api.metrics import ApiMetrics
from cloudrec.api.ratelimit import RateLimiter, RedisRateLimiter
from cloudrec.api.trace import new_trace_id
from cloudrec.config import Settings
from cloudrec.diskfull import api_error
from cloudrec.errors import CloudrecError, InvalidParameter
from cloudrec.models import (
    ApplyRecordRequest,
    QueryRecordRequest,
    StartRecordRequest,
    StopRecordRequest,
    UpdateMixRecordRequest,
    parse_request,
)
from cloudrec.tasks import Task

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
BASE = "/app/{appid}/v1/recordoss"


def envelope(code: int, message: str, trace_id: str, **extra: Any) -> dict[str, Any]:
    return {"code": code, "message": message, "traceId": trace_id, **extra}


class SeedResponse(JSONResponse):
    """A JSON answer that remembers its seed code (for the metrics)."""

    def __init__(self, content: dict[str, Any], status_code: int = 200) -> None:
        super().__init__(content, status_code=status_code)
        self.code = int(content.get("code", 0))


def error_response(exc: CloudrecError, trace_id: str) -> SeedResponse:
    extra = {"data": exc.data} if exc.data is not None else {}
    return SeedResponse(envelope(exc.code, exc.message, trace_id, **extra),
                        status_code=exc.http_status)


Work = Callable[[int], Awaitable[dict[str, Any]]]


class SeedRoutes:
    """Auth → rate limit → the work → the seed's envelope, each answer counted for the
    metrics: the shape every recordoss verb (and the ingress and auto-record verbs) answers."""

    def __init__(self, settings: Settings, writes: Any, metrics: ApiMetrics | None,
                 queries: Any = None) -> None:
        self.settings = settings
        self.writes = writes
        self.queries = queries
        self.metrics = metrics

    async def handle(self, request: Request, appid: str, endpoint: str, work: Work,
                     rate_key: Callable[[int], tuple[Any, ...]] | None = None) -> JSONResponse:
        """Answers with ``work(appid)``'s fields in the envelope. Rate-limited per AppID and
        endpoint (writes), or with ``rate_key(appid)`` as the key (queries)."""
        began = time.perf_counter()
        response = await self._answer(request, appid, endpoint, work, rate_key)
        if self.metrics is not None:
            self.metrics.observe(endpoint, response.code, time.perf_counter() - began)
        return response

    async def _answer(self, request: Request, appid: str, endpoint: str, work: Work,
                      rate_key: Callable[[int], tuple[Any, ...]] | None) -> SeedResponse:
        trace_id = request.query_params.get("traceId") or new_trace_id()
        try:
            # ASCII digits only: '²'.isdigit() is True, yet int('²') raises
            numeric = appid.isascii() and appid.isdigit() and len(appid) < 12
            path_appid = int(appid) if numeric else -1
            authenticate(request, path_appid, self.settings)
            if rate_key is None:
                await self.writes.check((path_appid, endpoint), f"{endpoint} per AppID")
            else:
                await self.queries.check(rate_key(path_appid), f"{endpoint} per recordid")
            extra = await work(path_appid)
        except CloudrecError as exc:
            return error_response(exc, trace_id)
        except Exception as exc:  # 2104; its message names the disk when that is full
            log.exception("%s failed (traceId %s)", endpoint, trace_id)
            return error_response(api_error(exc), trace_id)
        return SeedResponse(envelope(0, "success", trace_id, **extra))


async def read_body(request: Request) -> bytes:
    """The request body; 2101 beyond :data:`MAX_BODY` bytes."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise InvalidParameter("body", f"larger than {MAX_BODY} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def rate_limiters(settings: Settings) -> tuple[Any, Any]:
    """Per-node limits, or limits shared by the whole cluster when it has a Redis."""
    if settings.redis_url:
        url = settings.redis_url
        return (RedisRateLimiter(url, settings.write_rate_per_s, namespace="writes"),
                RedisRateLimiter(url, settings.query_rate_per_s, namespace="queries"))
    return RateLimiter(settings.write_rate_per_s), RateLimiter(settings.query_rate_per_s)


def recordoss_router(settings: Settings, service: Front,
                     limiters: tuple[Any, Any] | None = None,
                     metrics: ApiMetrics | None = None) -> APIRouter:
    router = APIRouter()
    writes, queries = limiters or rate_limiters(settings)

    seed = SeedRoutes(settings, writes, metrics, queries)
    handle = seed.handle

    @router.post(BASE + "/applyrecord")
    async def applyrecord(appid: str, request: Request) -> JSONResponse:
        async def work(app: int) -> dict[str, Any]:
            parse_request(ApplyRecordRequest, await read_body(request), app)
            return {"resid": service.apply(app)}

        return await handle(request, appid, "applyrecord", work)

    @router.post(BASE + "/startrecord")
    async def startrecord(appid: str, request: Request) -> JSONResponse:
        async def work(app: int) -> dict[str, Any]:
            req = parse_request(StartRecordRequest, await read_body(request), app)
            return {"recordid": await service.start(app, req)}

        return await handle(request, appid, "startrecord", work)

    @router.post(BASE + "/stoprecord")
    async def stoprecord(appid: str, request: Request) -> JSONResponse:
        async def work(app: int) -> dict[str, Any]:
            req = parse_request(StopRecordRequest, await read_body(request), app)
            stopped = await service.stop(app, req)
            return {"recordid": stopped["recordid"], "files": stopped["files"]}

        return await handle(request, appid, "stoprecord", work)

    def pause_route(endpoint: str, resume: bool) -> Callable[..., Awaitable[JSONResponse]]:
        """pauserecord / resumerecord (beyond the seed): stoprecord's body, auth, limits and
        codes; 4004 names the state when the task is paused already, or not paused."""
        async def route(appid: str, request: Request) -> JSONResponse:
            async def work(app: int) -> dict[str, Any]:
                req = parse_request(StopRecordRequest, await read_body(request), app)
                return await service.pause(app, req, resume=resume)

            return await handle(request, appid, endpoint, work)

        return route

    router.post(BASE + "/pauserecord")(pause_route("pauserecord", resume=False))
    router.post(BASE + "/resumerecord")(pause_route("resumerecord", resume=True))

    @router.post(BASE + "/updatemixrecord")
    async def updatemixrecord(appid: str, request: Request) -> JSONResponse:
        async def work(app: int) -> dict[str, Any]:
            req = parse_request(UpdateMixRecordRequest, await read_body(request), app)
            return {"recordid": await service.update(app, req)}

        return await handle(request, appid, "updatemixrecord", work)

    @router.get(BASE + "/queryrecord/{roomid}/{recordid}")
    async def queryrecord(appid: str, roomid: str, recordid: str, request: Request) -> JSONResponse:
        async def work(app: int) -> dict[str, Any]:
            parse_request(QueryRecordRequest, {"roomid": roomid, "recordid": recordid})
            return {"recordid": recordid, "data": await service.query(app, roomid, recordid)}

        return await handle(request, appid, "queryrecord", work, lambda app: (app, recordid))

    @router.get(BASE + "/listrecord")
    async def listrecord(appid: str, request: Request) -> JSONResponse:
        """Beyond the seed: the app's tasks, newest first (rate limit: per AppID, as writes)."""
        async def work(app: int) -> dict[str, Any]:
            query = list_query(dict(request.query_params))
            tasks = service.tasks.list_tasks(appid=app, **query)
            records = [describe_task(service, task) for task in tasks]
            full = len(tasks) == query["limit"]
            return {"data": {"records": records,
                             "before": tasks[-1].createtime if full and tasks else None}}

        return await handle(request, appid, "listrecord", work)

    return router


_ROOMID = re.compile(r"[A-Za-z0-9_\-.@]{1,128}")
_STATES = {"active": True, "stopped": False}
LIST_LIMIT, MAX_LIST_LIMIT = 50, 1000


def list_query(params: dict[str, str]) -> dict[str, Any]:
    """``listrecord``'s query: ``roomid``, ``state`` (active/stopped), ``limit`` (1–1000,
    default 50), ``before`` (ms: the ``before`` of the previous page). 2101 names a bad one."""
    unknown = set(params) - {"roomid", "state", "limit", "before", "traceId"}
    if unknown:
        raise InvalidParameter(sorted(unknown)[0], "is not a parameter of listrecord")
    roomid = params.get("roomid") or None
    if roomid is not None and not _ROOMID.fullmatch(roomid):
        raise InvalidParameter("roomid", "must be 1-128 of letters, digits and _ - . @")
    state = params.get("state") or None
    if state is not None and state not in _STATES:
        raise InvalidParameter("state", "must be active or stopped")
    limit = _int_param(params, "limit", LIST_LIMIT, 1, MAX_LIST_LIMIT)
    before = _int_param(params, "before", None, 0, 2**63 - 1)
    return {"roomid": roomid, "active": _STATES.get(state or ""), "limit": limit,
            "before_ms": before}


def _int_param(params: dict[str, str], name: str, default: int | None, low: int,
               high: int) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 19) or not low <= int(raw) <= high:
        raise InvalidParameter(name, f"must be an integer from {low} to {high}")
    return int(raw)


def describe_task(service: Front, task: Task) -> dict[str, Any]:
    """A task as ``queryrecord`` describes it, from the task store (its progress as of its
    last segment), with its ``resid``: the app needs it to stop or update the task."""
    return {**service.stored.describe(task), "resid": task.resid}
