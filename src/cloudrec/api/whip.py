"""WHIP signalling over HTTP (RFC 9725), and the ``/publish`` page.

The routes authenticate (publish tokens, :mod:`cloudrec.tokens`), read the offer and call
``publish``/``unpublish`` of what they front: a node's front, which routes each room to the
worker that owns it, or a worker's :class:`~cloudrec.webrtc.ingest.WebRtcIngest` directly.
They import nothing of WebRTC.

    POST    /whip/{appid}/{roomid}/{uid}   application/sdp offer, Authorization: Bearer <token>
                                           -> 201 answer, Location: /whip/session/{id}, ETag
    DELETE  /whip/session/{id}             -> 200, or 404 for an unknown session
    PATCH   /whip/session/{id}             -> 405: no trickle ICE and no ICE restart; the offer
                                              must carry its candidates (gathering complete)
    OPTIONS on both                        -> 204 CORS preflight
    GET     /publish                       -> a browser publishing page (getUserMedia + WHIP)

Errors answer ``text/plain``: 401 missing/bad token, 403 a play token (it never publishes),
404 unknown app or session, 400 wrong content type or unusable SDP, 503 with ``Retry-After``
on a full node, a room's worker out of reach, or while shutting down (``_answer_offer``, the
one mapping WHEP shares).
The session URL is an unguessable capability: DELETE needs no token. Every WHIP response
carries ``Access-Control-Allow-Origin: *`` so a page on another origin can publish.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Protocol

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from cloudrec.errors import AuthError, CapacityError, CloudrecError
from cloudrec.models.rules import NOT_PUBLISHING
from cloudrec.tokens import PlayTokenRefused, verify_token

__all__ = ["Publishing", "whip_router"]

logger = logging.getLogger(__name__)

MAX_SDP_BYTES = 64 * 1024

_CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": "Location, ETag, Link, Accept-Post",
}


def _preflight(methods: str) -> Response:
    return Response(
        status_code=204,
        headers={
            **_CORS,
            "Access-Control-Allow-Methods": methods,
            "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
            "Access-Control-Max-Age": "86400",
            "Accept-Post": "application/sdp",
            "Allow": methods,
        },
    )


def _error(status: int, message: str, **headers: str) -> Response:
    return Response(message + "\n", status_code=status, media_type="text/plain",
                    headers={**_CORS, **headers})


def _bearer(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


async def _read_bounded(request: Request, limit: int) -> bytes | None:
    """The request body, or None as soon as it is known to exceed ``limit`` bytes: a declared
    ``Content-Length`` above it is refused unread, and a chunked body is read only until it
    passes it, so a huge offer never sits in memory."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def _read_offer(request: Request) -> str | Response:
    """The request's SDP offer, or the 400 that refuses it: another content type than
    ``application/sdp``, a body over :data:`MAX_SDP_BYTES`, or one that is not UTF-8."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/sdp":
        return _error(400, "Content-Type must be application/sdp")
    body = await _read_bounded(request, MAX_SDP_BYTES)
    if body is None:
        return _error(400, f"SDP offer too large (more than {MAX_SDP_BYTES} bytes)")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return _error(400, "SDP offer is not UTF-8")


def _created(answer: str, location: str) -> Response:
    """201 with the SDP answer, the session's ``Location`` and its ``ETag``."""
    session_id = location.rsplit("/", 1)[-1]
    return Response(answer, status_code=201, media_type="application/sdp",
                    headers={**_CORS, "Location": location, "ETag": f'"{session_id}"'})


_RETRY = {"Retry-After": "5"}


async def _answer_offer(kind: str, call: Awaitable[tuple[str, str]]) -> Response:
    """The 201 for an offer ``call`` answered (``(answer, session id)``), or the status its
    failure maps to, one mapping for WHIP and WHEP: 503 + ``Retry-After`` for a full node, a
    server-side failure (a worker out of reach) or a shutdown; 404 for a room with nobody
    publishing; 400 for an offer that cannot be answered (never a 500 for client input)."""
    try:
        answer, session_id = await call
    except CapacityError as exc:
        return _error(503, exc.message, **_RETRY)
    except CloudrecError as exc:
        if exc.code == NOT_PUBLISHING:
            return _error(404, exc.message)
        if exc.http_status >= 500:
            return _error(503, exc.message, **_RETRY)
        return _error(400, exc.message)
    except RuntimeError as exc:
        if "closed" in str(exc):
            return _error(503, "shutting down", **_RETRY)
        logger.exception("%s offer failed", kind.upper())
        return _error(400, f"cannot answer the offer: {exc}")
    except Exception as exc:  # aiortc on an odd offer
        logger.exception("%s offer failed", kind.upper())
        return _error(400, f"cannot answer the offer: {exc}")
    return _created(answer, f"/{kind}/session/{session_id}")


def _session_routes(router: APIRouter, kind: str, stop: Callable[[str], Awaitable[bool]]) -> None:
    """``DELETE``, ``PATCH`` (405: no trickle ICE, no ICE restart) and ``OPTIONS`` on
    ``/{kind}/session/{id}``; DELETE ends the session with ``stop(id)``."""
    path = f"/{kind}/session/{{session_id}}"

    @router.delete(path, name=f"{kind}_delete")
    async def delete(session_id: str) -> Response:
        if await stop(session_id):
            return Response(status_code=200, headers=_CORS)
        return _error(404, f"unknown {kind.upper()} session")

    @router.patch(path, name=f"{kind}_patch")
    async def patch(session_id: str) -> Response:
        return _error(405, "trickle ICE and ICE restarts are not supported; "
                      "send an offer with all candidates", Allow="DELETE, OPTIONS")

    @router.options(path, name=f"{kind}_session_preflight")
    async def preflight(session_id: str) -> Response:
        return _preflight("DELETE, OPTIONS")


class Publishing(Protocol):
    """What WHIP publishes into: a :class:`~cloudrec.webrtc.ingest.WebRtcIngest`, or a node's
    front that routes each room to the worker (or node) that owns it."""

    async def publish(
        self, appid: int, roomid: str, uid: str, offer_sdp: str,
    ) -> tuple[str, str]: ...

    async def unpublish(self, session_id: str) -> bool: ...


def whip_router(hub: Publishing, secret_for: Callable[[int], str | None]) -> APIRouter:
    """Routes for WHIP publishing into ``hub`` (a :class:`Publishing`); ``secret_for(appid)``
    is the app's secret, or None for an unknown app."""
    router = APIRouter(tags=["whip"])

    @router.post("/whip/{appid}/{roomid}/{uid}")
    async def whip_publish(appid: str, roomid: str, uid: str, request: Request) -> Response:
        # ASCII digits only: '²'.isdigit() is True, yet int('²') raises
        numeric = appid.isascii() and appid.isdigit() and len(appid) < 19
        secret = secret_for(int(appid)) if numeric else None
        if secret is None:
            return _error(404, f"unknown app {appid}")
        try:
            verify_token(_bearer(request), int(appid), roomid, uid, secret)
        except PlayTokenRefused as exc:
            return _error(403, exc.message)
        except AuthError as exc:
            return _error(401, exc.message, **{"WWW-Authenticate": 'Bearer realm="whip"'})
        offer = await _read_offer(request)
        if isinstance(offer, Response):
            return offer
        return await _answer_offer("whip", hub.publish(int(appid), roomid, uid, offer))

    @router.options("/whip/{appid}/{roomid}/{uid}")
    async def whip_publish_preflight(appid: str, roomid: str, uid: str) -> Response:
        return _preflight("POST, OPTIONS")

    _session_routes(router, "whip", hub.unpublish)

    @router.get("/publish", response_class=HTMLResponse)
    async def publish_page() -> HTMLResponse:
        page = resources.files("cloudrec").joinpath("static/publish.html").read_text("utf-8")
        return HTMLResponse(page)

    return router
