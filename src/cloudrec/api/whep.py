"""WHEP playback signalling over HTTP (draft-ietf-wish-whep), the room's event stream and the
room page.

The routes authenticate (a publish or play token of the room, :mod:`cloudrec.tokens`), read
the offer and call ``play``/``stop_play`` of the node's front, which routes each room to the
worker that owns it (:mod:`cloudrec.webrtc.viewer` answers there). They import nothing of
WebRTC.

    POST    /whep/{appid}/{roomid}/{uid}   application/sdp offer, Authorization: Bearer <token>
                                           -> 201 answer, Location: /whep/session/{id}, ETag
    DELETE  /whep/session/{id}             -> 200, or 404 for an unknown session
    PATCH   /whep/session/{id}             -> 405: no trickle ICE (the offer carries its
                                              candidates)
    OPTIONS on both                        -> 204 CORS preflight
    GET     /rooms/{appid}/{roomid}/events -> text/event-stream: ``published`` and
                                              ``unpublished`` events, data ``{"uid": ...}``
                                              (token: Bearer, or ``?token=`` for EventSource)
    GET     /room/{appid}/{roomid}?uid=U&token=T -> the room page (publish + watch the others)

The token may be a publish token of any uid of the room or a play token (``"play": true``);
its uid is the viewer's, not the publisher's. Errors answer ``text/plain``: 401 no token, an
invalid one or another room's; 404 unknown app, a uid that is not publishing, an unknown
session; 400 wrong content type or an offer that cannot be used; 503 with ``Retry-After``
beyond ``max_viewers`` of the room (or while shutting down). As for WHIP, every response
carries ``Access-Control-Allow-Origin: *`` and the session URL is the capability to end it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Protocol

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse

from cloudrec.api.whip import (
    _CORS,
    _answer_offer,
    _bearer,
    _error,
    _preflight,
    _read_offer,
    _session_routes,
)
from cloudrec.errors import AuthError
from cloudrec.tokens import verify_room_token

__all__ = ["Playing", "RoomWatch", "whep_router"]

logger = logging.getLogger(__name__)

POLL_S = 1.0  # how often the front asks the room's worker who publishes
KEEPALIVE_S = 15.0


class Playing(Protocol):
    """What WHEP plays from: a node's front."""

    async def play(self, appid: int, roomid: str, uid: str, offer_sdp: str) -> tuple[str, str]: ...

    async def stop_play(self, session_id: str) -> bool: ...

    async def room_publishers(self, appid: int, roomid: str) -> list[str]: ...


class RoomWatch:
    """One poll per watched room, shared by its event streams: every ``POLL_S`` the room's
    publishers are read from its worker, and each stream gets the differences."""

    def __init__(self, front: Playing, poll_s: float = POLL_S) -> None:
        self.front = front
        self.poll_s = poll_s
        self._queues: dict[tuple[int, str], list[asyncio.Queue[tuple[str, str]]]] = {}
        self._uids: dict[tuple[int, str], list[str]] = {}
        self._tasks: dict[tuple[int, str], asyncio.Task[None]] = {}

    def watch(self, appid: int, roomid: str) -> asyncio.Queue[tuple[str, str]]:
        """A queue of ``(event, uid)`` pairs: ``published`` for each publisher present, then
        the changes; :meth:`unwatch` it when done."""
        key = (appid, roomid)
        queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        for uid in self._uids.get(key, []):
            queue.put_nowait(("published", uid))
        self._queues.setdefault(key, []).append(queue)
        if key not in self._tasks:
            self._tasks[key] = asyncio.get_running_loop().create_task(self._poll(key))
        return queue

    def unwatch(self, appid: int, roomid: str, queue: asyncio.Queue[tuple[str, str]]) -> None:
        key = (appid, roomid)
        queues = self._queues.get(key, [])
        if queue in queues:
            queues.remove(queue)
        if not queues:
            self._queues.pop(key, None)
            self._uids.pop(key, None)
            task = self._tasks.pop(key, None)
            if task is not None:
                task.cancel()

    async def _poll(self, key: tuple[int, str]) -> None:
        while True:
            try:
                uids = await self.front.room_publishers(*key)
            except Exception as exc:  # the worker is busy or moving: try again next round
                logger.warning("publishers of room %s/%s: %s", *key, exc)
                uids = None
            if uids is not None:
                before = self._uids.get(key, [])
                events = [("unpublished", u) for u in before if u not in uids]
                events += [("published", u) for u in uids if u not in before]
                self._uids[key] = uids
                for queue in self._queues.get(key, []):
                    for event in events:
                        queue.put_nowait(event)
            await asyncio.sleep(self.poll_s)


def whep_router(front: Playing, secret_for: Callable[[int], str | None]) -> APIRouter:
    """Routes for WHEP playback and the room page; ``secret_for(appid)`` is the app's secret,
    or None for an unknown app."""
    router = APIRouter(tags=["whep"])
    rooms = RoomWatch(front)

    def authorize(appid: str, roomid: str, token: str) -> Response | int:
        numeric = appid.isascii() and appid.isdigit() and len(appid) < 19
        secret = secret_for(int(appid)) if numeric else None
        if secret is None:
            return _error(404, f"unknown app {appid}")
        try:
            verify_room_token(token, int(appid), roomid, secret)
        except AuthError as exc:
            return _error(401, exc.message, **{"WWW-Authenticate": 'Bearer realm="whep"'})
        return int(appid)

    @router.post("/whep/{appid}/{roomid}/{uid}")
    async def whep_play(appid: str, roomid: str, uid: str, request: Request) -> Response:
        app = authorize(appid, roomid, _bearer(request))
        if isinstance(app, Response):
            return app
        offer = await _read_offer(request)
        if isinstance(offer, Response):
            return offer
        return await _answer_offer("whep", front.play(app, roomid, uid, offer))

    @router.options("/whep/{appid}/{roomid}/{uid}")
    async def whep_play_preflight(appid: str, roomid: str, uid: str) -> Response:
        return _preflight("POST, OPTIONS")

    _session_routes(router, "whep", front.stop_play)

    @router.get("/rooms/{appid}/{roomid}/events")
    async def room_events(appid: str, roomid: str, request: Request) -> Response:
        token = _bearer(request) or request.query_params.get("token", "")
        app = authorize(appid, roomid, token)
        if isinstance(app, Response):
            return app

        async def stream() -> AsyncIterator[str]:
            events = rooms.watch(app, roomid)
            try:
                yield "retry: 2000\n\n"
                while True:
                    try:
                        kind, uid = await asyncio.wait_for(events.get(), KEEPALIVE_S)
                    except TimeoutError:
                        yield ": keepalive\n\n"
                        continue
                    yield f"event: {kind}\ndata: {json.dumps({'uid': uid})}\n\n"
            finally:
                rooms.unwatch(app, roomid, events)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={**_CORS, "Cache-Control": "no-store",
                                          "X-Accel-Buffering": "no"})

    @router.get("/room/{appid}/{roomid}", response_class=HTMLResponse)
    async def room_page(appid: str, roomid: str) -> HTMLResponse:
        page = resources.files("cloudrec").joinpath("static/room.html").read_text("utf-8")
        return HTMLResponse(page)

    return router
