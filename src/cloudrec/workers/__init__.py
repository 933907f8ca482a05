"""Every core of a node: worker processes that each own some rooms.

A room, its publishers and the recordings that read only it live on one worker; the node's
front (the API and WHIP signalling on the node's one port) routes each request to the worker
that owns the room. ``workers = 1`` keeps one process: the front is its own only worker.

    front (api/front.py) ──WorkerClient──► Worker (worker.py): RoomHub + RecordingService
         │                    local call (workers = 1), or HTTP to /internal/* (channel.py)
         └── Supervisor (supervisor.py): starts, pings, restarts the worker processes (main.py)
"""

from cloudrec.workers.channel import HttpWorkerClient, LocalWorkerClient, WorkerClient, internal_router
from cloudrec.workers.worker import Worker

__all__ = ["HttpWorkerClient", "LocalWorkerClient", "Worker", "WorkerClient", "internal_router"]
