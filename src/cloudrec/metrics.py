"""Prometheus metrics of a node, served at ``/metrics`` in the text format.

Where the numbers live. A node's recordings run in worker processes, and prometheus-client's
multiprocess mode (a directory of mmapped files shared by every process, cleaned up by hand
when one dies) would be one more thing to break on a restart. Instead:

- each process counts its recordings' work in plain integers, :data:`counters` (a worker
  process is one worker; with ``workers = 1`` the front process is its one worker);
- :func:`worker_snapshot` turns them, with gauges read from the worker's rooms and
  recordings, into JSON that :meth:`Worker.status` returns; the front polls that every second
  anyway (for placement) and keeps the latest snapshot of each worker;
- :class:`NodeCollector`, a custom collector in the front, exposes those snapshots with a
  ``worker`` label (and ``node``), with what the front itself holds: the callback outbox, the
  API's requests (:class:`ApiMetrics`) and each worker's measured CPU.

A worker that restarts starts its counters from zero, which Prometheus reads as a counter reset
(``rate()`` and ``increase()`` handle it). A scrape shows each worker as of its last status,
at most a second old.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:  # pragma: no cover
    from cloudrec.api.front import Front
    from cloudrec.workers.worker import Worker

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def recording_type(streamtype: int) -> str:
    """``mixed`` for streamtype 1, else ``source``."""
    return "mixed" if streamtype == 1 else "source"


class Counters:
    """What this process's recordings did since it started: plain integers, bumped on the
    event loop (no locks needed), read by :func:`worker_snapshot`."""

    def __init__(self) -> None:
        self.segments_written = 0  # closed by a recorder and handed to the spool
        self.segments_stored = 0  # confirmed by the store
        self.files_stored = 0  # segments and playlists
        self.bytes_uploaded = 0
        self.upload_failures = 0  # attempts that failed (each is retried)
        self.frames_skipped = 0  # of recordings that have ended; running ones are added live
        self.frames_dropped = 0
        self.recordings_started: dict[str, int] = {}  # type -> n
        self.recordings_stopped: dict[str, int] = {}  # "type/reason" -> n

    def stored(self, name: str, size: int) -> None:
        self.files_stored += 1
        self.bytes_uploaded += size
        if name.endswith(".ts"):
            self.segments_stored += 1

    def recording_started(self, streamtype: int) -> None:
        kind = recording_type(streamtype)
        self.recordings_started[kind] = self.recordings_started.get(kind, 0) + 1

    def recording_ended(self, streamtype: int, reason: str, progress: dict[str, Any]) -> None:
        """A recording's end: its frames skipped and dropped move from live to done."""
        key = f"{recording_type(streamtype)}/{reason}"
        self.recordings_stopped[key] = self.recordings_stopped.get(key, 0) + 1
        self.frames_skipped += int(progress.get("framesskipped") or 0)
        self.frames_dropped += int(progress.get("framesdropped") or 0)


#: This process's counters.
counters = Counters()


def spool_bytes(root: Path) -> int:
    """Bytes of the files under a spool directory (two levels: task, file)."""
    total = 0
    try:
        tasks = list(os.scandir(root))
    except OSError:
        return 0
    for task in tasks:
        try:
            if not task.is_dir(follow_symlinks=False):
                continue
            for entry in os.scandir(task.path):
                try:
                    if entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
                except OSError:
                    pass  # uploaded and deleted meanwhile
        except OSError:
            pass
    return total


def worker_snapshot(worker: Worker) -> dict[str, Any]:
    """The worker's metrics as JSON, for its status: :data:`counters` plus what is running now
    (recordings by type, segments waiting in the spool, the spool's size, frames received)."""
    service = worker.service
    active = {"source": 0, "mixed": 0}
    skipped, dropped, pending = counters.frames_skipped, counters.frames_dropped, 0
    for recording in list(service.recordings.values()):
        active[recording_type(recording.task.streamtype)] += 1
        pending += recording.uploader.pending_segments
        try:
            progress = recording.progress()
        except Exception:  # a recording between states; next second
            continue
        skipped += int(progress.get("framesskipped") or 0)
        dropped += int(progress.get("framesdropped") or 0)
    pending += sum(u.pending_segments for u in list(getattr(service, "_leftovers", [])))
    return {
        "publishers": worker.hub.publisher_count(),
        "recordings_active": active,
        "recordings_started": dict(counters.recordings_started),
        "recordings_stopped": dict(counters.recordings_stopped),
        "segments_written": counters.segments_written,
        "segments_stored": counters.segments_stored,
        "segments_pending": pending,
        "files_stored": counters.files_stored,
        "bytes_uploaded": counters.bytes_uploaded,
        "upload_failures": counters.upload_failures,
        "spool_bytes": spool_bytes(service.spool.root),
        "frames_received": worker.hub.frames_received(),
        "frames_skipped": skipped,
        "frames_dropped": dropped,
    }


class ApiMetrics:
    """The API's requests in the front: by endpoint and seed code, and their latency."""

    def __init__(self, registry: CollectorRegistry, node: str) -> None:
        self.node = node
        self.requests = Counter("cloudrec_api_requests", "API requests, by endpoint and seed code",
                                ["node", "endpoint", "code"], registry=registry)
        self.latency = Histogram(
            "cloudrec_api_request_duration_seconds", "API request latency, by endpoint",
            ["node", "endpoint"], registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0))

    def observe(self, endpoint: str, code: int, seconds: float) -> None:
        self.requests.labels(self.node, endpoint, str(code)).inc()
        self.latency.labels(self.node, endpoint).observe(seconds)


# name, help, key in the snapshot: one sample per worker
_WORKER_COUNTERS = [
    ("cloudrec_segments_written", "Segments closed by recorders and handed to the spool",
     "segments_written"),
    ("cloudrec_segments_stored", "Segments the store confirmed", "segments_stored"),
    ("cloudrec_files_stored", "Files (segments and playlists) the store confirmed",
     "files_stored"),
    ("cloudrec_upload_bytes", "Bytes stored (segments and playlists)", "bytes_uploaded"),
    ("cloudrec_upload_failures", "Upload attempts that failed (each is retried)",
     "upload_failures"),
    ("cloudrec_frames_skipped", "Frames mixed recordings skipped to keep up with real time",
     "frames_skipped"),
    ("cloudrec_frames_dropped", "Input frames mixed recordings dropped while too far behind",
     "frames_dropped"),
]
_WORKER_GAUGES = [
    ("cloudrec_publishers", "WebRTC publishers received", "publishers"),
    ("cloudrec_segments_pending", "Segments waiting in the spool for the store",
     "segments_pending"),
    ("cloudrec_spool_bytes", "Bytes in the spool on disk", "spool_bytes"),
]


class NodeCollector(Collector):
    """Reads the front's latest worker snapshots and its own state at each scrape."""

    def __init__(self, front: Front) -> None:
        self.front = front

    def collect(self) -> Iterator[Metric]:
        front, node = self.front, self.front.node
        snapshots: dict[str, dict[str, Any]] = dict(getattr(front, "worker_metrics", {}))
        labels = ["node", "worker"]
        for name, doc, key in _WORKER_COUNTERS:
            family = CounterMetricFamily(name, doc, labels=labels)
            for worker, snap in snapshots.items():
                family.add_metric([node, worker], float(snap.get(key, 0)))
            yield family
        for name, doc, key in _WORKER_GAUGES:
            family = GaugeMetricFamily(name, doc, labels=labels)
            for worker, snap in snapshots.items():
                family.add_metric([node, worker], float(snap.get(key, 0)))
            yield family
        yield from self._by(snapshots, "cloudrec_recordings_active", "Recordings running, by type",
                            "recordings_active", ["type"], gauge=True)
        yield from self._by(snapshots, "cloudrec_recordings_started", "Recordings started, by type",
                            "recordings_started", ["type"])
        yield from self._by(snapshots, "cloudrec_recordings_stopped",
                            "Recordings ended, by type and stop reason", "recordings_stopped",
                            ["type", "reason"])
        yield from self._by(snapshots, "cloudrec_frames_received",
                            "Encoded frames received from WebRTC publishers, by kind",
                            "frames_received", ["kind"])
        cpu = GaugeMetricFamily("cloudrec_worker_cpu",
                                "Measured CPU of each worker's process tree, in cores",
                                labels=labels)
        recordings = GaugeMetricFamily("cloudrec_worker_recordings", "Recordings on each worker",
                                       labels=labels)
        for info in list(front.infos):
            cpu.add_metric([node, info.id], info.cpu)
            recordings.add_metric([node, info.id], info.recordings)
        yield cpu
        yield recordings
        yield from self._outbox(node)

    def _by(self, snapshots: dict[str, dict[str, Any]], name: str, doc: str, key: str,
            extra: list[str], gauge: bool = False) -> Iterable[Metric]:
        """A family whose snapshot value is a dict keyed by its extra labels ("a/b")."""
        labels = ["node", "worker", *extra]
        family: Metric = (GaugeMetricFamily(name, doc, labels=labels) if gauge
                          else CounterMetricFamily(name, doc, labels=labels))
        node = self.front.node
        for worker, snap in snapshots.items():
            for sub, value in (snap.get(key) or {}).items():
                family.add_metric([node, worker, *str(sub).split("/", len(extra) - 1)],
                                  float(value))
        yield family

    def _outbox(self, node: str) -> Iterable[Metric]:
        outbox = self.front.outbox
        if outbox is None:
            return
        depth = GaugeMetricFamily("cloudrec_callback_outbox_depth",
                                  "Callback events waiting in the outbox (shared by the cluster)",
                                  labels=["node"])
        try:
            depth.add_metric([node], float(outbox.pending()))
        except Exception:  # the database is away: leave the sample out
            pass
        yield depth
        for name, doc, attr in [
            ("cloudrec_callback_delivered", "Callback events this node delivered", "delivered"),
            ("cloudrec_callback_failures", "Callback delivery attempts that failed (retried)",
             "failures"),
            ("cloudrec_callback_dropped", "Callback events given up", "dropped"),
        ]:
            family = CounterMetricFamily(name, doc, labels=["node"])
            family.add_metric([node], float(getattr(outbox, attr, 0)))
            yield family


class NodeMetrics:
    """The registry behind a node's ``/metrics``: its own, not prometheus-client's global one,
    so that several apps in one process (tests) each show their own node."""

    def __init__(self, front: Front) -> None:
        from prometheus_client import ProcessCollector, disable_created_metrics

        disable_created_metrics()  # no ``*_created`` series: Prometheus does not need them
        self.registry = CollectorRegistry()
        self.api = ApiMetrics(self.registry, front.node)
        self.registry.register(NodeCollector(front))
        ProcessCollector(registry=self.registry)  # the front process's own CPU and memory

    def render(self) -> bytes:
        return generate_latest(self.registry)
