"""The directory's vocabulary: a worker's published state, admission, the interface.

Admission counts committed cost (:mod:`cloudrec.cluster.costs`): a worker's spare capacity is
``capacity - committed - reservations``, where ``committed`` is what the worker's running
recordings and publishers cost at the costs it learned from its own process tree's CPU, and a
start holds a reservation of the cost of its kind until the worker's next heartbeat counts it
in ``committed`` (or a few seconds at most). A moment's CPU reading (``cpu``) is not counted:
a neighbour's spike, or the start-up of the recordings just accepted, does not refuse a start
the worker can hold. A worker that publishes no ``committed`` is judged on ``cpu``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from cloudrec.errors import CapacityError

RoomKey = tuple[int, str]

DEFAULT_COST = 0.05  # cores a recording is expected to cost before a worker has measured one
MAX_COST = 0.25  # at most this much is reserved for one start (a big mix shows in the CPU soon)
IDLE_LOAD = 0.05  # at most this much committed (a few publishers) counts as idle


def room_name(key: RoomKey) -> str:
    return f"{key[0]}/{key[1]}"


def worker_id(node: str, index: int) -> str:
    """A worker's id: ``{node}/w{index}``, the same across restarts of the worker."""
    return f"{node}/w{index}"


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker publishes about itself with each heartbeat."""

    id: str  # "{node}/w{index}", stable across restarts of the worker
    node: str
    url: str  # where its internal API (``/internal/...``) answers
    public_url: str  # the node's public base URL (WHIP redirects go there)
    relay: str = ""  # host:port of its encoded-media relay
    cpu: float = 0.0  # cores its processes used over the last seconds
    capacity: float = 0.85  # cores it may use (settings.max_cpu)
    recordings: int = 0
    publishers: int = 0
    max_recordings: int = 0  # 0: no cap beyond CPU
    committed: float = -1.0  # cores its recordings and publishers cost (cluster.costs); -1: unknown
    costs: dict[str, float] = field(default_factory=dict)  # its learned cost of each kind
    draining: bool = False
    rooms: tuple[str, ...] = ()  # "appid/roomid" it holds
    pid: int = 0
    updated: float = field(default_factory=time.time)

    @property
    def cost_per_recording(self) -> float:
        """What one more recording is expected to cost: this worker's measured CPU shared
        over what it carries (its publishers' receiving and its recordings alike), bounded so
        that a worker with many publishers and few recordings does not count its receiving as
        the cost of every recording it starts."""
        units = self.recordings + self.publishers
        if units <= 0:
            return DEFAULT_COST
        return min(max(self.cpu / units, 0.005), MAX_COST)

    def cost_of(self, kind: str = "source_aac", units: float = 1.0) -> float:
        """The reservation for a new recording of ``kind``: this worker's learned cost of that
        kind (cluster.costs), or, from a worker that publishes none, its CPU per recording."""
        if kind in self.costs:
            return min(self.costs[kind] * units, MAX_COST * max(units, 1.0))
        return self.cost_per_recording

    @property
    def load(self) -> float:
        """What admission counts as used: committed cost where the worker publishes it."""
        return self.committed if self.committed >= 0 else self.cpu

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["rooms"] = list(self.rooms)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "WorkerInfo":
        data = dict(data)
        data["rooms"] = tuple(data.get("rooms") or ())
        return cls(**data)

    def refused(self, reserved: float = 0.0, extra_recordings: int = 0,
                cost: float | None = None) -> str | None:
        """Why this worker takes no new recording (of ``cost`` cores; its cost per recording
        when None), or None when it does."""
        if self.draining:
            return "draining"
        if self.max_recordings and self.recordings + extra_recordings >= self.max_recordings:
            return f"{self.recordings} recordings of at most {self.max_recordings}"
        cost = self.cost_of() if cost is None else cost
        if cost > self.capacity:  # bigger than a worker (a web page): only an idle one takes it
            if self.load + reserved > IDLE_LOAD:
                return (f"a recording of {cost:.2f} cores needs an idle worker; this one "
                        f"carries {self.load + reserved:.2f} of {self.capacity:.2f} cores")
            return None
        if self.load + reserved + cost > self.capacity:
            what = "committed" if self.committed >= 0 else "CPU"
            return (f"{what} {self.load:.2f} + {reserved:.2f} reserved + {cost:.3f} of "
                    f"{self.capacity:.2f} cores")
        return None

    def spare(self, reserved: float = 0.0) -> float:
        return self.capacity - self.load - reserved


class ClusterFull(CapacityError):
    """No worker of the cluster takes a new room or recording."""


class Directory(Protocol):
    """Rooms → workers, and the workers' published state. All calls are cheap and bounded."""

    lease_s: float

    async def heartbeat(self, node: str, workers: list[WorkerInfo]) -> None:
        """Publish this node's workers and renew the leases of the rooms they hold."""
        ...

    async def forget_node(self, node: str) -> None:
        """This node leaves (shutdown): its workers and rooms are freed at once."""
        ...

    async def workers(self) -> list[WorkerInfo]:
        """Live workers of every node (heartbeat younger than the lease)."""
        ...

    async def owner(self, key: RoomKey) -> WorkerInfo | None:
        """The live worker that holds the room, if any."""
        ...

    async def place(self, key: RoomKey, prefer: str | None = None) -> WorkerInfo:
        """The room's owner, or else the worker with the most spare capacity (``prefer``, a
        worker id, when it has room), claimed atomically. Raises :class:`ClusterFull`."""
        ...

    async def reserve(self, worker_id: str, cost: float) -> None:
        """Count ``cost`` cores against a worker for a few seconds (an accepted recording)."""
        ...

    async def unreserve(self, worker_id: str) -> None:
        """Give back the oldest reservation (a recording stopped before its CPU showed)."""
        ...

    async def reserved(self, worker_id: str) -> float: ...

    async def close(self) -> None: ...


def choose(workers: list[WorkerInfo], reserved: dict[str, float],
           prefer: str | None = None) -> WorkerInfo:
    """The worker a new room goes to: ``prefer`` if it takes work, else the most spare CPU."""
    open_ = [w for w in workers if w.refused(reserved.get(w.id, 0.0)) is None]
    if not open_:
        why = "; ".join(f"{w.id}: {w.refused(reserved.get(w.id, 0.0))}" for w in workers)
        raise ClusterFull("no capacity: every worker of the cluster is full"
                          + (f" ({why})" if why else " (no live worker)"))
    for w in open_:
        if w.id == prefer:
            return w
    return max(open_, key=lambda w: (w.spare(reserved.get(w.id, 0.0)), -w.recordings))


def fresh(info: WorkerInfo, lease_s: float, now: float | None = None) -> bool:
    return ((now or time.time()) - info.updated) < lease_s
