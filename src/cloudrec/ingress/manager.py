"""The ingresses a worker runs: one :class:`~cloudrec.ingress.runner.IngressRunner` each.

The front hands an ingress to the worker that owns its room (``Worker.ingress_start``) after
claiming it for that worker in the store; a delete stops it here (``Worker.ingress_stop``). On
start the worker resumes the ingresses the store says it owns and that were not deleted (a
restart of the worker or of the node); a shutdown stops the runners without touching their
stored state, so the restart picks them up.
"""

from __future__ import annotations

import logging
from typing import Any

from cloudrec.ingress.runner import IngressRunner
from cloudrec.ingress.sources import source_for
from cloudrec.ingress.store import IngressStore
from cloudrec.rooms import RoomHub

log = logging.getLogger(__name__)


class IngressManager:
    def __init__(self, hub: RoomHub, store: IngressStore, worker_id: str, *,
                 allow_private: bool) -> None:
        self.hub = hub
        self.store = store
        self.worker_id = worker_id
        self.allow_private = allow_private
        self.runners: dict[str, IngressRunner] = {}

    def start(self, spec: dict[str, Any]) -> bool:
        """Run the ingress here (no-op when it runs already); whether it started now."""
        ingressid = str(spec["ingressid"])
        if ingressid in self.runners:
            return False
        runner = IngressRunner(spec, self.hub, self.store, allow_private=self.allow_private,
                               source=source_for(str(spec["kind"])))
        self.runners[ingressid] = runner
        runner.start()
        log.info("ingress %s (%s) into %s/%s started", ingressid, spec["kind"], spec["appid"],
                 spec["roomid"])
        return True

    async def stop(self, ingressid: str, reason: str = "deleted") -> bool:
        runner = self.runners.pop(ingressid, None)
        if runner is None:
            return False
        await runner.stop(reason)
        log.info("ingress %s stopped: %s", ingressid, reason)
        return True

    async def recover(self) -> list[str]:
        """Resume the ingresses the store says this worker runs."""
        started = [i.ingressid for i in self.store.owned_by(self.worker_id)
                   if self.start(i.spec())]
        if started:
            log.info("resumed %d ingress(es): %s", len(started), ", ".join(started))
        return started

    async def close(self) -> None:
        for ingressid in list(self.runners):
            await self.stop(ingressid, "worker stopping")

    def snapshot(self) -> dict[str, int]:
        """Runners by ``kind/state`` (a worker's metrics)."""
        out: dict[str, int] = {}
        for r in self.runners.values():
            key = f"{r.kind}/{r.state}"
            out[key] = out.get(key, 0) + 1
        return out
