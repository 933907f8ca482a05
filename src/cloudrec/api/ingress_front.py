"""The front's side of ingresses: store, place, hand to the room's worker, and follow it.

- create: the ingress is stored (state ``connecting``), its room placed like a WHIP
  publisher's (``Front._place``), claimed for that worker in the store and handed to it
  (``WorkerClient.ingress_start``). The worker reports its state into the store.
- delete: marked deleted and ``stopped`` in the store, then stopped on its worker (its
  publishers leave the room); a worker that is gone has nothing left to stop.
- follow (every few seconds, on every front): an ingress whose owner is not a live worker (its
  node died, or it was never handed over) is claimed in the store, which one front wins, placed
  with its room and started there; a moved one is ``connecting`` (the reason names the gone
  worker) until its new worker reports it. A worker that restarts resumes its own ingresses itself.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from cloudrec.console.redact import redact_url
from cloudrec.errors import RecordingError
from cloudrec.ingress import Ingress, IngressStore
from cloudrec.ingress.guard import check_source
from cloudrec.models.ingress import IngressRequest

log = logging.getLogger(__name__)

FOLLOW_S = 3.0


def describe(ingress: Ingress) -> dict[str, Any]:
    """An ingress as the API answers it: credentials in its URL redacted."""
    return {"ingressid": ingress.ingressid, "roomid": ingress.roomid, "uid": ingress.uid,
            "url": redact_url(ingress.url), "kind": ingress.kind, "state": ingress.state,
            "error": None if ingress.state == "active" else ingress.error,
            "publishers": ingress.publishers, "since": ingress.since,
            "createtime": ingress.createtime, "reconnects": ingress.reconnects}


class IngressFront:
    def __init__(self, front: Any) -> None:
        self.front = front
        self.store = IngressStore(front.tasks.database)
        self._loop: asyncio.Task[None] | None = None

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop().create_task(self._follow_loop())

    async def close(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            await asyncio.gather(self._loop, return_exceptions=True)

    # -- the API's verbs ------------------------------------------------------------------------

    async def create(self, appid: int, req: IngressRequest) -> str:
        settings = self.front.settings
        await check_source(req.url, allow_private=settings.allow_private_urls)
        ingress = self.store.create(appid=appid, roomid=req.roomid, uid=req.uid, url=req.url,
                                    kind=req.kind)
        log.info("ingress %s created: %s into %s/%s", ingress.ingressid, redact_url(req.url),
                 appid, req.roomid)
        try:
            await self._hand_over(ingress)
        except Exception as exc:  # placed later by the follow loop
            log.warning("ingress %s not started yet: %s", ingress.ingressid, exc)
        return ingress.ingressid

    def get(self, appid: int, ingressid: str) -> dict[str, Any]:
        ingress = self.store.get(ingressid, appid)
        if ingress is None:
            raise RecordingError(f"ingress {ingressid!r} is unknown", 4013)
        return describe(ingress)

    def list(self, appid: int, roomid: str | None) -> list[dict[str, Any]]:
        return [describe(i) for i in self.store.ingresses(appid=appid, roomid=roomid)]

    async def delete(self, appid: int, ingressid: str) -> dict[str, Any]:
        ingress = self.store.get(ingressid, appid)
        if ingress is None or not self.store.delete(ingressid):
            raise RecordingError(f"ingress {ingressid!r} is unknown or deleted", 4013)
        if ingress.owner is not None:
            info = await self._worker(ingress.owner)
            if info is not None:
                try:
                    await self.front.client_for(info).ingress_stop(ingressid)
                except Exception as exc:
                    log.warning("ingress %s: its worker did not stop it: %s", ingressid, exc)
        log.info("ingress %s deleted", ingressid)
        return self.get(appid, ingressid)

    # -- placement ------------------------------------------------------------------------------

    async def _worker(self, worker_id: str) -> Any:
        return next((w for w in await self.front.directory.workers() if w.id == worker_id),
                    None)

    async def _hand_over(self, ingress: Ingress) -> bool:
        owner = await self.front._place(ingress.appid, ingress.roomid)
        if not self.store.claim(ingress.ingressid, owner.id, ingress.owner):
            return False  # another front took it, or it was deleted
        if ingress.owner is not None:  # what the dead worker last stored is stale
            self.store.set_state(ingress.ingressid, "connecting",
                                 f"its worker {ingress.owner} is gone; moved to {owner.id}",
                                 reconnect=True)
        await self.front.client_for(owner).ingress_start(ingress.spec())
        return True

    async def follow(self) -> None:
        """Hand ingresses whose worker is gone (or was never reached) to their room's owner."""
        live = {w.id for w in await self.front.directory.workers()}
        for ingress in self.store.ingresses():
            if ingress.owner is not None and ingress.owner in live:
                continue
            try:
                if await self._hand_over(ingress):
                    log.info("ingress %s (worker %s gone) moved with room %s/%s",
                             ingress.ingressid, ingress.owner, ingress.appid, ingress.roomid)
            except Exception as exc:
                log.warning("ingress %s could not be placed: %s", ingress.ingressid, exc)

    async def _follow_loop(self) -> None:
        while True:
            await asyncio.sleep(FOLLOW_S)
            if self.front.draining:
                continue
            try:
                await self.follow()
            except Exception:
                log.exception("following ingresses failed")
