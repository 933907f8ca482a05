"""Where rooms live: the nodes and workers of a cluster, their load, and room placement.

One seam for one node and for a cluster: the front of every node asks a :class:`Directory` who
owns a room, places new rooms on the worker with the most spare capacity, and publishes its
workers' load with a heartbeat. :class:`LocalDirectory` serves one node in memory;
:class:`RedisDirectory` shares the same answers between the nodes of a cluster.
"""

from cloudrec.cluster.directory import (
    ClusterFull,
    Directory,
    RoomKey,
    WorkerInfo,
    room_name,
    worker_id,
)
from cloudrec.cluster.local import LocalDirectory

__all__ = ["ClusterFull", "Directory", "LocalDirectory", "RoomKey", "WorkerInfo", "open_directory",
           "room_name", "worker_id"]


def open_directory(redis_url: str, lease_s: float = 6.0) -> Directory:
    """Redis when the node is part of a cluster, else this node alone."""
    if redis_url:
        from cloudrec.cluster.redis import RedisDirectory

        return RedisDirectory(redis_url, lease_s=lease_s)
    return LocalDirectory(lease_s=lease_s)
