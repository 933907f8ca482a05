"""Auto-record rules: record every publisher of matching rooms with no API call.

- ``POST /app/{appid}/v1/autorecord`` ``{"roomid": pattern with * wildcards, "streamtype",
  "recordtype", "storagecfg", "callbackurl"?, "mixconfig"? (streamtype 1)}`` → ``{"ruleid"}``;
- ``GET /app/{appid}/v1/autorecord`` → ``data.rules``;
- ``DELETE /app/{appid}/v1/autorecord/{ruleid}`` removes one (4013 when unknown); recordings
  it started go on until their publisher leaves.

Rules live in the shared store; the worker that owns a room applies them
(:mod:`cloudrec.ingress.autorecord`). Storage keys never come back in an answer.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from cloudrec.api.ingress import SeedRoutes, check_id, json_object, read_body
from cloudrec.api.metrics import ApiMetrics
from cloudrec.config import Settings
from cloudrec.console.redact import redact
from cloudrec.errors import RecordingError
from cloudrec.ingress import IngressStore, Rule
from cloudrec.models import parse_request
from cloudrec.models.ingress import AutoRecordRequest

BASE = "/app/{appid}/v1/autorecord"


def describe_rule(rule: Rule) -> dict[str, Any]:
    return redact({"ruleid": rule.ruleid, "roomid": rule.pattern, **rule.request,
                   "streamtype": rule.streamtype, "createtime": rule.createtime})


def autorecord_router(settings: Settings, store: IngressStore, writes: Any,
                      metrics: ApiMetrics | None = None) -> APIRouter:
    router = APIRouter()
    seed = SeedRoutes(settings, writes, metrics)

    @router.post(BASE)
    async def add(appid: str, request: Request) -> JSONResponse:
        async def work(app: int) -> dict[str, Any]:
            req = parse_request(AutoRecordRequest, json_object(await read_body(request)), app)
            body = req.model_dump(mode="json", by_alias=True, exclude={"appid", "roomid"})
            rule = store.add_rule(app, req.roomid, req.streamtype, body)
            return {"ruleid": rule.ruleid}

        return await seed.handle(request, appid, "autorecord", work)

    @router.get(BASE)
    async def rules(appid: str, request: Request) -> JSONResponse:
        async def work(app: int) -> dict[str, Any]:
            return {"data": {"rules": [describe_rule(r) for r in store.rules(app)]}}

        return await seed.handle(request, appid, "listautorecord", work)

    @router.delete(BASE + "/{ruleid}")
    async def delete(appid: str, ruleid: str, request: Request) -> JSONResponse:
        async def work(app: int) -> dict[str, Any]:
            check_id("ruleid", ruleid)
            if not store.delete_rule(app, ruleid):
                raise RecordingError(f"rule {ruleid!r} is unknown", 4013)
            return {"ruleid": ruleid}

        return await seed.handle(request, appid, "deleteautorecord", work)

    return router
