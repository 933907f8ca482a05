"""The console's routes on the node's port.

Pages: ``/`` (the console), ``/login`` (sign-in form, POST signs in), ``/logout`` (POST),
``/docs`` (Swagger UI) and ``/openapi.json``. JSON for the page and for scripts, under
``/console/api/``: ``overview``, ``rooms``, ``recordings`` (``?appid=&roomid=&state=&before=
&limit=``), ``recordings/{recordid}``, ``nodes`` and ``samples`` (the charts' last 10
minutes). Writes, POST with a JSON body: ``playtoken`` (a play token to watch a publisher over
WHEP), ``recordings`` (start a source recording of a publisher) and ``recordings/{recordid}/
stop``. A recording's files: ``/console/files/
{recordid}/{name}``. The bundled assets: ``/console/static/`` (open: they are the same public
code for everyone and the sign-in page needs its style sheet).

Everything but the assets and the sign-in form asks :class:`OperatorAuth`; a page without a
session is redirected to the sign-in form, JSON and files answer 401. Every JSON answer is
redacted (:mod:`cloudrec.console.redact`) and marked ``no-store``; pages carry a
Content-Security-Policy that allows this server only, so even a bug in the page cannot make the
browser fetch from anywhere else. A write needs, beyond the credential, the JSON content type:
a page of another site cannot send one without the browser asking this server first (and the
cookie is ``SameSite=Strict``), so no cross-site request forgery reaches a write.
"""

from __future__ import annotations

import html
import json
import logging
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.staticfiles import StaticFiles
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response

from cloudrec import __version__
from cloudrec.config import Settings
from cloudrec.console import files, live, views
from cloudrec.console.assets import HLS_JS, STATIC_DIR, STATIC_URL
from cloudrec.console.auth import COOKIE, SESSION_S, OperatorAuth, SignInRequired
from cloudrec.console.docs import docs_page
from cloudrec.console.redact import redact
from cloudrec.errors import CloudrecError

log = logging.getLogger(__name__)

PAGE_CSP = ("default-src 'self'; img-src 'self' data:; media-src 'self' blob:; "
            "worker-src 'self' blob:; connect-src 'self'; style-src 'self'; script-src 'self'; "
            "frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
NO_STORE = {"Cache-Control": "no-store"}


def _page(name: str, **values: str) -> HTMLResponse:
    text = (STATIC_DIR / name).read_text("utf-8")
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", html.escape(value, quote=True))
    return HTMLResponse(text, headers={"Content-Security-Policy": PAGE_CSP, **NO_STORE})


def _json(data: Any, status_code: int = 200) -> JSONResponse:
    return JSONResponse(redact(data), status_code=status_code, headers=NO_STORE)


def _safe_next(target: str | None) -> str:
    """Only a path on this server (no ``//host``, no scheme) may follow the sign-in."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


async def _write_body(request: Request) -> dict[str, Any] | JSONResponse:
    """The JSON object of a write, or the answer refusing it (not JSON: 415)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        return JSONResponse({"code": 2101, "message": "a console write needs a JSON body "
                             "(Content-Type: application/json)"}, status_code=415,
                            headers=NO_STORE)
    try:
        body = json.loads((await request.body())[:65536] or b"{}")
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return JSONResponse({"code": 2101, "message": "invalid parameter body: not a JSON "
                             "object"}, status_code=400, headers=NO_STORE)
    return body


def _error(exc: CloudrecError) -> JSONResponse:
    return _json(live.error_body(exc), exc.http_status)


def mount_console(app: FastAPI, settings: Settings, front: Any) -> OperatorAuth:
    """Add the console, its sign-in and ``/docs`` to ``app`` (built with ``docs_url``,
    ``redoc_url`` and ``openapi_url`` set to None). The auth is returned and kept as
    ``app.state.operator_auth``: another operator route is protected the same way by calling
    its ``check(request)`` (a 401, or the sign-in redirect, follows)."""
    auth = OperatorAuth(settings)
    auth.announce(settings.base_url)
    samples = live.Samples(front, settings.console_sample_s)
    front.periodic.append((settings.console_sample_s, samples.sample))
    app.state.console_samples = samples
    app.state.operator_auth = auth

    def operator(request: Request) -> None:
        auth.check(request)

    router = APIRouter(include_in_schema=False)

    @app.exception_handler(SignInRequired)
    async def sign_in_required(request: Request, exc: SignInRequired) -> Response:
        if request.method == "GET" and request.url.path in ("/", "/docs") \
                and auth.mode == "password":
            return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)
        return JSONResponse({"error": exc.reason, "signin": "/login"}, status_code=401,
                            headers={"WWW-Authenticate": 'Bearer realm="cloudrec console"',
                                     **NO_STORE})

    # -- pages -----------------------------------------------------------------------------------

    @router.get("/", dependencies=[Depends(operator)])
    async def console_page() -> HTMLResponse:
        return _page("index.html", hls_js=HLS_JS, version=__version__)

    @router.get("/login")
    async def login_page(request: Request, next: str = "/", failed: int = 0) -> Response:
        if auth.mode == "open":
            return RedirectResponse(_safe_next(next), status_code=303)
        message = ""
        if auth.mode == "closed":
            message = "The console is closed: set operator_password in the server's settings."
        elif failed:
            message = "Wrong password."
        return _page("login.html", next=_safe_next(next), message=message)

    @router.post("/login")
    async def login(request: Request) -> Response:
        client = request.client.host if request.client else "?"
        form = parse_qs((await request.body())[:4096].decode("utf-8", "replace"))
        target = _safe_next((form.get("next") or ["/"])[0])
        if auth.mode != "password":
            return RedirectResponse(f"/login?next={quote(target)}", status_code=303)
        if auth.too_many_failures(client):
            return HTMLResponse("Too many failed sign-ins; wait a minute.", status_code=429,
                                headers={"Retry-After": "60"})
        if not auth.password_ok((form.get("password") or [""])[0]):
            auth.failed(client)
            log.warning("console: failed sign-in from %s", client)
            return RedirectResponse(f"/login?failed=1&next={quote(target)}", status_code=303)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(COOKIE, auth.new_session(), max_age=SESSION_S, path="/",
                            httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")
        log.info("console: operator signed in from %s", client)
        return response

    @router.post("/logout")
    async def logout() -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    @router.get("/docs", dependencies=[Depends(operator)])
    async def docs() -> HTMLResponse:
        return docs_page(app.title)

    @router.get("/openapi.json", dependencies=[Depends(operator)])
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi(), headers=NO_STORE)

    # -- JSON --------------------------------------------------------------------------------------

    api = APIRouter(prefix="/console/api", dependencies=[Depends(operator)],
                    include_in_schema=False)

    @api.get("/overview")
    async def overview() -> JSONResponse:
        workers = await front.directory.workers()
        return _json({"node": front.node, "version": __version__, "auth": auth.mode,
                      "nodes": len({w.node for w in workers}), "workers": len(workers),
                      "recordings": sum(w.recordings for w in workers),
                      "publishers": sum(w.publishers for w in workers),
                      "apps": [a.appid for a in settings.apps]})

    @api.get("/rooms")
    async def rooms() -> JSONResponse:
        return _json({"rooms": await views.rooms(front)})

    @api.get("/recordings")
    async def recordings(appid: int | None = None, roomid: str | None = None,
                         state: str = "all", before: int | None = None,
                         limit: int = 50) -> JSONResponse:
        if state not in ("all", *views.STATES):
            return _json({"error": f"state must be one of all, {', '.join(views.STATES)}"}, 400)
        return _json(await views.recordings(front, appid=appid, roomid=roomid or None,
                                            state=state, before_ms=before,
                                            limit=max(1, min(limit, 200))))

    @api.get("/recordings/{recordid}")
    async def recording(recordid: str) -> JSONResponse:
        task = front.tasks.get(recordid)
        if task is None:
            return _json({"error": f"no recording {recordid!r}"}, 404)
        return _json(await views.recording(front, task, detail=True))

    @api.get("/ingresses")
    async def ingresses(request: Request) -> JSONResponse:
        return _json(views.ingresses(request.app.state.ingresses.store))

    @api.get("/nodes")
    async def nodes() -> JSONResponse:
        return _json({"nodes": await views.nodes(front)})

    @api.get("/samples")
    async def samples_json() -> JSONResponse:
        return _json(samples.series())

    # -- writes ----------------------------------------------------------------------------------

    @api.post("/playtoken")
    async def playtoken(request: Request) -> JSONResponse:
        body = await _write_body(request)
        if isinstance(body, JSONResponse):
            return body
        try:  # the answer is a play token for the page: not redacted, never an app's secret
            return JSONResponse(live.play_token(settings, body), headers=NO_STORE)
        except CloudrecError as exc:
            return _error(exc)

    @api.post("/recordings")
    async def start_recording(request: Request) -> JSONResponse:
        body = await _write_body(request)
        if isinstance(body, JSONResponse):
            return body
        try:
            started = await live.start_source(front, settings, body)
        except CloudrecError as exc:
            return _error(exc)
        log.info("console: operator started recording %s", started["recordid"])
        return _json({"code": 0, "message": "success", **started})

    @api.post("/recordings/{recordid}/stop")
    async def stop_recording(recordid: str, request: Request) -> JSONResponse:
        body = await _write_body(request)
        if isinstance(body, JSONResponse):
            return body
        try:
            stopped = await live.stop(front, recordid)
        except CloudrecError as exc:
            return _error(exc)
        log.info("console: operator stopped recording %s", recordid)
        return _json({"code": 0, "message": "success", **stopped})

    # -- a recording's files ----------------------------------------------------------------------

    @router.get("/console/files/{recordid}/{name}", dependencies=[Depends(operator)])
    async def recording_file(recordid: str, name: str) -> Response:
        task = front.tasks.get(recordid) if files.NAME.fullmatch(name) else None
        path = (files.locate(task, name, settings.data_dir, settings.local_storage_dir)
                if task is not None else None)
        if path is None:
            return JSONResponse({"error": "no such file on this node"}, status_code=404,
                                headers=NO_STORE)
        kind = name.rsplit(".", 1)[1]
        headers = {"Cache-Control": "no-cache" if kind == "m3u8" else "private, max-age=3600"}
        if kind == "jpg" and task is not None:  # small; it may leave the spool meanwhile
            for _ in range(3):
                try:
                    return Response(path.read_bytes(), media_type="image/jpeg",
                                    headers=headers)
                except FileNotFoundError:
                    path = files.locate(task, name, settings.data_dir) or path
        return FileResponse(path, media_type=files.CONTENT_TYPES[kind], headers=headers)

    app.include_router(router)
    app.include_router(api)
    app.mount(STATIC_URL, StaticFiles(directory=STATIC_DIR), name="console-static")
    return auth
