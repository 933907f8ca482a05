"""The ingress API: pull a stream into a room as a publisher.

- ``POST /app/{appid}/v1/ingress`` ``{"roomid", "uid", "url"}`` → ``{"ingressid"}``;
- ``GET /app/{appid}/v1/ingress/{ingressid}`` → ``data``: ``ingressid``, ``roomid``, ``uid``,
  ``url`` (credentials redacted), ``state`` (connecting, active, retrying, error, stopped),
  ``error`` (why, whenever it is not active), ``publishers`` (codecs, bitrate), ``since``;
- ``GET /app/{appid}/v1/ingress?roomid=`` → ``data.ingresses``;
- ``DELETE /app/{appid}/v1/ingress/{ingressid}`` ends it: its publishers leave the room.

The recordoss verbs' rules apply: the AppID + Token headers, 10 requests/s per AppID and
endpoint, validation answering 2101 naming the field, and the seed's envelope. An unknown
ingressid answers 4013.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from cloudrec.api.ingress_front import IngressFront
from cloudrec.api.metrics import ApiMetrics
from cloudrec.api.recordoss import SeedRoutes, read_body
from cloudrec.config import Settings
from cloudrec.errors import InvalidParameter
from cloudrec.models import parse_request
from cloudrec.models._fields import _SAFE_ID, MAX_ID_CHARS
from cloudrec.models.ingress import IngressRequest

BASE = "/app/{appid}/v1/ingress"


def json_object(raw: bytes) -> bytes:
    """An empty body is no JSON object here (``parse_request`` reads it as ``{}``)."""
    if not raw.strip():
        raise InvalidParameter("body", "must be a JSON object")
    return raw


def check_id(name: str, value: str | None) -> str | None:
    if value is None or value == "":
        return None
    if len(value) > MAX_ID_CHARS or not _SAFE_ID.fullmatch(value):
        raise InvalidParameter(name, "may contain only letters, digits and _ - . @")
    return value


def ingress_router(settings: Settings, ingresses: IngressFront, writes: Any,
                   metrics: ApiMetrics | None = None) -> APIRouter:
    router = APIRouter()
    seed = SeedRoutes(settings, writes, metrics)

    @router.post(BASE)
    async def create(appid: str, request: Request) -> JSONResponse:
        async def work(app: int) -> dict[str, Any]:
            req = parse_request(IngressRequest, json_object(await read_body(request)), app)
            return {"ingressid": await ingresses.create(app, req)}

        return await seed.handle(request, appid, "ingress", work)

    @router.get(BASE)
    async def list_ingresses(appid: str, request: Request) -> JSONResponse:
        async def work(app: int) -> dict[str, Any]:
            roomid = check_id("roomid", request.query_params.get("roomid"))
            return {"data": {"ingresses": ingresses.list(app, roomid)}}

        return await seed.handle(request, appid, "listingress", work)

    @router.get(BASE + "/{ingressid}")
    async def show(appid: str, ingressid: str, request: Request) -> JSONResponse:
        async def work(app: int) -> dict[str, Any]:
            check_id("ingressid", ingressid)
            return {"ingressid": ingressid, "data": ingresses.get(app, ingressid)}

        return await seed.handle(request, appid, "queryingress", work)

    @router.delete(BASE + "/{ingressid}")
    async def delete(appid: str, ingressid: str, request: Request) -> JSONResponse:
        async def work(app: int) -> dict[str, Any]:
            check_id("ingressid", ingressid)
            return {"ingressid": ingressid, "data": await ingresses.delete(app, ingressid)}

        return await seed.handle(request, appid, "deleteingress", work)

    return router
