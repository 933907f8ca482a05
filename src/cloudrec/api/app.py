"""The FastAPI application of a node: control plane, WHIP signalling and the /publish page on
one port, in front of the node's workers (:mod:`cloudrec.api.front`)."""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from cloudrec.api.autorecord import autorecord_router
from cloudrec.api.front import Front
from cloudrec.api.ingress import ingress_router
from cloudrec.api.ingress_front import IngressFront
from cloudrec.api.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from cloudrec.api.metrics import IngressCollector, NodeMetrics
from cloudrec.api.recordoss import envelope, rate_limiters, recordoss_router
from cloudrec.api.trace import new_trace_id
from cloudrec.api.whep import whep_router
from cloudrec.api.whip import whip_router
from cloudrec.cluster import open_directory
from cloudrec.config import Settings
from cloudrec.console.routes import mount_console
from cloudrec.stores import open_stores
from cloudrec.workers import internal_router
from cloudrec.workers.wire import SECRET_HEADER

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> FastAPI:
    """Build the app; the stores, the directory and the workers live for the app's lifespan."""
    stores = open_stores(settings)
    tasks, outbox = stores.tasks, stores.outbox
    directory = open_directory(settings.redis_url)
    front = Front(settings, directory, tasks, outbox)
    limiters = rate_limiters(settings)
    metrics = NodeMetrics(front)
    ingresses = IngressFront(front)
    metrics.registry.register(IngressCollector(ingresses.store, front.node))

    def secret_for(appid: int) -> str | None:
        app_cfg = settings.app(appid)
        return app_cfg.secret if app_cfg else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        outbox.start()
        await front.open()
        await ingresses.open()
        try:
            yield
        finally:
            await ingresses.close()
            await front.close()
            await directory.close()
            for limiter in limiters:
                await limiter.close()
            await stores.close()

    # FastAPI's /docs and /redoc load from CDNs: the console serves /docs from bundled files.
    # No redirect to the path without its trailing slash: a path parameter holding an encoded
    # '/' would get a bodyless 307 instead of the seed's 2101 (or WHIP's 404).
    app = FastAPI(title="cloudrec", version="0.1.0", lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None, redirect_slashes=False)
    app.state.settings = settings
    app.state.front = front
    app.state.outbox = outbox
    if front.local is not None:  # one process: the front is its own worker
        app.state.service = front.local.service
        app.state.hub = front.local.hub
        app.state.webrtc = front.local.webrtc
        app.state.viewers = front.local.viewers
    app.include_router(recordoss_router(settings, front, limiters, metrics.api))
    app.include_router(whip_router(front, secret_for))
    app.include_router(whep_router(front, secret_for))
    app.state.ingresses = ingresses
    app.include_router(ingress_router(settings, ingresses, limiters[0], metrics.api))
    app.include_router(autorecord_router(settings, ingresses.store, limiters[0], metrics.api))
    mount_console(app, settings, front)  # /, /login, /docs, /console/...
    @app.post("/cluster/locate", include_in_schema=False)
    async def locate(request: Request) -> JSONResponse:
        """Workers ask who owns a room they relay (authenticated by the cluster secret)."""
        if not hmac.compare_digest(request.headers.get(SECRET_HEADER, ""), front.secret):
            return JSONResponse({"error": "bad internal credential"}, status_code=401)
        body = await request.json()
        return JSONResponse({"relay": await front.locate_relay(
            (int(body["appid"]), str(body["roomid"])))})

    # With one process, other nodes reach this node's worker here.
    app.include_router(internal_router(lambda: front.local, front.secret))

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

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics(request: Request) -> Response:
        """Prometheus text format: this node, each of its workers as of its last status.
        Behind the operator credential, like the console (a scraper sends it as a Bearer
        token or Basic ``operator:PASSWORD``)."""
        app.state.operator_auth.check(request)
        return Response(metrics.render(), media_type=METRICS_CONTENT_TYPE)

    @app.get("/healthz")
    async def healthz() -> dict[str, object]:
        return {"ok": True, "node": front.node, "draining": front.draining,
                "recordings": front.recordings(),
                "workers": [w.to_json() for w in front.infos]}

    return app
