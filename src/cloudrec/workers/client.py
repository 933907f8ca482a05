"""How a front reaches a worker: one typed method per operation, over a direct call in the same
process (:class:`LocalWorkerClient`) or HTTP to the worker's ``/internal/{op}`` routes
(:class:`HttpWorkerClient`: another process of this node, or a worker of another node).

A request model is passed as it is: in process the worker gets the object itself, over HTTP
its JSON dump, rebuilt into the same model on the other side (:mod:`cloudrec.workers.wire`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import httpx

from cloudrec.models import StartRecordRequest, StopRecordRequest, UpdateMixRecordRequest
from cloudrec.workers.wire import (
    ARGS_HEADER,
    SECRET_HEADER,
    WorkerUnavailable,
    check_op,
    decode_error,
    encode_args,
)

DEFAULT_TIMEOUT_S = 30.0


class InProcessWorker(Protocol):
    """What the front holds of the worker that runs in its own process (``workers = 1``,
    :class:`cloudrec.workers.worker.Worker`); it calls it through a
    :class:`LocalWorkerClient`."""

    id: str
    service: Any  # its recordings (the app exposes them to tests)
    hub: Any  # its rooms
    webrtc: Any  # its WebRTC sessions (the app exposes them to tests)
    viewers: Any  # its WHEP viewers
    locate: Callable[[tuple[int, str]], Awaitable[str | None]]  # who relays a room

    async def open(self) -> None: ...

    async def close(self) -> None: ...


class WorkerClient:
    """The operations of a worker, each with its arguments and its answer's shape. A
    transport implements :meth:`_call`; errors come back as the :class:`CloudrecError` the
    worker raised, and a worker that cannot be reached raises :class:`WorkerUnavailable`."""

    async def _call(self, op: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
        raise NotImplementedError

    async def _stream(self, op: str, args: dict[str, Any],
                      chunks: AsyncIterator[bytes]) -> dict[str, Any]:
        raise NotImplementedError

    async def close(self) -> None:
        pass

    async def _offer(self, op: str, appid: int, roomid: str, uid: str,
                     sdp: str) -> tuple[str, str]:
        result = await self._call(op, {"appid": appid, "roomid": roomid, "uid": uid,
                                       "sdp": sdp}, DEFAULT_TIMEOUT_S)
        return str(result["answer"]), str(result["session"])

    async def _end_session(self, op: str, session: str) -> bool:
        result = await self._call(op, {"session": session}, DEFAULT_TIMEOUT_S)
        return bool(result["found"])

    # -- rooms ----------------------------------------------------------------------------------

    async def publish(self, appid: int, roomid: str, uid: str, sdp: str) -> tuple[str, str]:
        """A WHIP offer: ``(answer SDP, session id on that worker)``."""
        return await self._offer("publish", appid, roomid, uid, sdp)

    async def unpublish(self, session: str) -> bool:
        """End a WHIP session; whether the worker had it."""
        return await self._end_session("unpublish", session)

    async def publications(self, timeout: float = DEFAULT_TIMEOUT_S) -> list[dict[str, Any]]:
        """The publications received on the worker, with what each sends."""
        result = await self._call("publications", {}, timeout)
        return list(result["publications"])

    async def play(self, appid: int, roomid: str, uid: str, sdp: str) -> tuple[str, str]:
        """A WHEP offer to watch ``uid``: ``(answer SDP, session id on that worker)``."""
        return await self._offer("play", appid, roomid, uid, sdp)

    async def stop_play(self, session: str) -> bool:
        """End a WHEP session; whether the worker had it."""
        return await self._end_session("stop_play", session)

    async def room_publishers(self, appid: int, roomid: str,
                              timeout: float = DEFAULT_TIMEOUT_S) -> list[str]:
        """The uids publishing in a room of the worker, in join order."""
        result = await self._call("room_publishers", {"appid": appid, "roomid": roomid},
                                  timeout)
        return [str(uid) for uid in result["uids"]]

    async def ingest_stream(self, appid: int, roomid: str, uid: str, transport: str, fmt: str,
                            chunks: AsyncIterator[bytes]) -> str:
        """An RTMP/SRT publisher's media (``fmt`` ``"flv"`` or ``"mpegts"``) to the worker
        that owns the room; returns when the publication ended, with why. No timeout: it lasts
        as long as the publisher."""
        result = await self._stream("ingest_stream", {
            "appid": appid, "roomid": roomid, "uid": uid, "transport": transport, "fmt": fmt},
            chunks)
        return str(result.get("reason") or "ended")

    # -- recordings -----------------------------------------------------------------------------

    async def start(self, appid: int, req: StartRecordRequest, remote_rooms: list[str]) -> str:
        """startrecord; the new task's recordid."""
        result = await self._call("start", {"appid": appid, "req": req,
                                            "remote_rooms": remote_rooms}, DEFAULT_TIMEOUT_S)
        return str(result["recordid"])

    async def stop(self, appid: int, req: StopRecordRequest) -> dict[str, Any]:
        """stoprecord: ``{"recordid", "files"}``."""
        result = await self._call("stop", {"appid": appid, "req": req}, DEFAULT_TIMEOUT_S)
        return {"recordid": str(result["recordid"]), "files": list(result.get("files") or [])}

    async def pause(self, appid: int, req: StopRecordRequest) -> dict[str, Any]:
        """pauserecord: ``{"recordid", "paused", "pausetime", ...}``."""
        return await self._call("pause", {"appid": appid, "req": req}, DEFAULT_TIMEOUT_S)

    async def resume(self, appid: int, req: StopRecordRequest) -> dict[str, Any]:
        """resumerecord: as :meth:`pause`."""
        return await self._call("resume", {"appid": appid, "req": req}, DEFAULT_TIMEOUT_S)

    async def update(self, appid: int, req: UpdateMixRecordRequest) -> str:
        """updatemixrecord; the task's recordid."""
        result = await self._call("update", {"appid": appid, "req": req}, DEFAULT_TIMEOUT_S)
        return str(result["recordid"])

    async def query(self, appid: int, roomid: str, recordid: str) -> dict[str, Any]:
        """queryrecord's ``data``."""
        result = await self._call("query", {"appid": appid, "roomid": roomid,
                                            "recordid": recordid}, DEFAULT_TIMEOUT_S)
        return dict(result["data"])

    async def adopt(self, recordids: list[str]) -> list[str]:
        """Take over tasks whose worker is gone; those the worker resumed."""
        result = await self._call("adopt", {"recordids": recordids}, DEFAULT_TIMEOUT_S)
        return list(result["adopted"])

    # -- ingresses ------------------------------------------------------------------------------

    async def ingress_start(self, spec: dict[str, Any]) -> bool:
        """Run an ingress (``IngressStore``'s ``Ingress.spec()``) on the worker; whether it
        started now (False: it runs there already)."""
        result = await self._call("ingress_start", {"spec": spec}, DEFAULT_TIMEOUT_S)
        return bool(result["started"])

    async def ingress_stop(self, ingressid: str) -> bool:
        """Stop an ingress on the worker; whether it ran there."""
        result = await self._call("ingress_stop", {"ingressid": ingressid}, DEFAULT_TIMEOUT_S)
        return bool(result["found"])

    # -- load -----------------------------------------------------------------------------------

    async def status(self, timeout: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
        """The worker's id, pid, load, rooms, relay address and metrics snapshot."""
        return await self._call("status", {}, timeout)


class LocalWorkerClient(WorkerClient):
    """The worker lives in this process (``workers = 1``): a plain call, errors as raised."""

    def __init__(self, worker: InProcessWorker) -> None:
        self.worker = worker

    async def _call(self, op: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
        check_op(op)
        return dict(await getattr(self.worker, op)(**args))

    async def _stream(self, op: str, args: dict[str, Any],
                      chunks: AsyncIterator[bytes]) -> dict[str, Any]:
        check_op(op)
        return dict(await getattr(self.worker, op)(**args, chunks=chunks))


class HttpWorkerClient(WorkerClient):
    def __init__(self, url: str, secret: str) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.AsyncClient(headers={SECRET_HEADER: secret},
                                       limits=httpx.Limits(max_connections=64))

    async def _call(self, op: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
        try:
            r = await self._http.post(f"{self.url}/internal/{op}", json=encode_args(args),
                                      timeout=timeout)
            answer = r.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise WorkerUnavailable(
                f"worker at {self.url} did not answer ({type(exc).__name__})") from exc
        return _result(answer)

    async def _stream(self, op: str, args: dict[str, Any],
                      chunks: AsyncIterator[bytes]) -> dict[str, Any]:
        """A streaming POST: the body is ``chunks``, no read or write timeout. A worker that
        ends the stream early answers before the body is done (the answer is read anyway)."""
        try:
            r = await self._http.post(
                f"{self.url}/internal/{op}", content=chunks,
                headers={ARGS_HEADER: json.dumps(encode_args(args))},
                timeout=httpx.Timeout(10.0, read=None, write=None))
            answer = r.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise WorkerUnavailable(
                f"worker at {self.url} dropped the stream ({type(exc).__name__})") from exc
        return _result(answer)

    async def close(self) -> None:
        await self._http.aclose()


def _result(answer: Any) -> dict[str, Any]:
    """A worker's ``{"ok": ...}``, or the error its ``{"error": ...}`` encodes, raised."""
    if "error" in answer:
        raise decode_error(answer["error"])
    return dict(answer["ok"])
