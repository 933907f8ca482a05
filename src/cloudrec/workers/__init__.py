"""Every core of a node: worker processes that each own some rooms.

A room, its publishers and the recordings that read only it live on one worker; the node's
front (the API and WHIP signalling on the node's one port) routes each request to the worker
that owns the room. ``workers = 1`` keeps one process: the front is its own only worker.

    front (api/front.py) ──WorkerClient (client.py)──► Worker (worker.py): RoomHub + recordings
         │        a local call (workers = 1), or HTTP to /internal/{op} (internal.py, wire.py)
         └── Supervisor (supervisor.py): starts, pings, restarts the worker processes (main.py)

The front side (``client``, ``wire``, ``supervisor``) loads no media: only a worker process
imports :mod:`cloudrec.workers.worker`.
"""

from cloudrec.workers.client import HttpWorkerClient, LocalWorkerClient, WorkerClient
from cloudrec.workers.internal import internal_router
from cloudrec.workers.wire import WorkerUnavailable

__all__ = ["HttpWorkerClient", "LocalWorkerClient", "WorkerClient", "WorkerUnavailable",
           "internal_router"]
