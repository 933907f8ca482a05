"""The FastAPI application: control plane, WHIP ingest and the /publish page in one server."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from cloudrec.api.recordoss import envelope, recordoss_router
from cloudrec.api.trace import new_trace_id
from cloudrec.callbacks import CallbackOutbox
from cloudrec.config import Settings
from cloudrec.recorder import RecordingService
from cloudrec.rooms import RoomHub, whip_router
from cloudrec.tasks import TaskStore

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> FastAPI:
    """Build the app; the task store, room hub and recordings live for the app's lifespan."""
    tasks = TaskStore(settings.data_dir / "tasks.sqlite3", resid_ttl_s=settings.resid_ttl_s)
    hub = RoomHub()

    def secret_for(appid: int) -> str | None:
        app_cfg = settings.app(appid)
        return app_cfg.secret if app_cfg else None

    outbox = CallbackOutbox(settings.data_dir / "callbacks.sqlite3", secret_for,
                            retry_for_s=settings.callback_retry_s)
    service = RecordingService(settings, tasks, hub, outbox)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        outbox.start()
        await service.recover()
        try:
            yield
        finally:
            await service.shutdown()
            await hub.close()
            await outbox.close()
            tasks.close()

    app = FastAPI(title="cloudrec", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.service = service
    app.state.hub = hub
    app.state.outbox = outbox
    app.include_router(recordoss_router(settings, service))

    app.include_router(whip_router(hub, secret_for))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        trace_id = request.query_params.get("traceId") or new_trace_id()
        code = 2101 if exc.status_code in (404, 405) else 2104
        message = {404: "unknown request uri", 405: "method not allowed"}.get(
            exc.status_code, str(exc.detail)
        )
        return JSONResponse(envelope(code, message, trace_id), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        trace_id = request.query_params.get("traceId") or new_trace_id()
        return JSONResponse(envelope(2101, f"invalid parameter: {exc.errors()[:1]}", trace_id),
                            status_code=400)

    @app.get("/healthz")
    async def healthz() -> dict[str, object]:
        return {"ok": True, "recordings": len(service.recordings)}

    return app
