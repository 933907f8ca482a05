"""Prometheus metrics of a node, served at ``/metrics`` in the text format: what the front
collects. Each worker's counters come in its status (:func:`cloudrec.metrics.worker_snapshot`)
and are exposed here with a ``worker`` label (and ``node``), beside what the front itself
holds: the callback outbox, the API's requests (:class:`ApiMetrics`) and each worker's
measured CPU.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Worker(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def cpu(self) -> float: ...

    @property
    def recordings(self) -> int: ...


class FrontState(Protocol):
    """What the collector reads of the front (:class:`cloudrec.api.front.Front`)."""

    node: str
    outbox: Any  # the callback outbox, or None
    worker_metrics: dict[str, dict[str, Any]]  # worker id -> its latest snapshot

    @property
    def infos(self) -> Sequence[_Worker]: ...


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

    def __init__(self, front: FrontState) -> None:
        self.front = front

    def collect(self) -> Iterator[Metric]:
        front, node = self.front, self.front.node
        snapshots: dict[str, dict[str, Any]] = dict(front.worker_metrics)
        labels = ["node", "worker"]
        for name, doc, key in _WORKER_COUNTERS:
            counter = CounterMetricFamily(name, doc, labels=labels)
            for worker, snap in snapshots.items():
                counter.add_metric([node, worker], float(snap.get(key, 0)))
            yield counter
        for name, doc, key in _WORKER_GAUGES:
            gauge = GaugeMetricFamily(name, doc, labels=labels)
            for worker, snap in snapshots.items():
                gauge.add_metric([node, worker], float(snap.get(key, 0)))
            yield gauge
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
        yield from self._by(snapshots, "cloudrec_ingests_active",
                            "Push publishers (RTMP, SRT) being received, by kind",
                            "ingests_active", ["kind"], gauge=True)
        yield from self._by(snapshots, "cloudrec_ingests_started",
                            "Push publishers (RTMP, SRT) that started, by kind",
                            "ingests_started", ["kind"])
        yield from self._by(snapshots, "cloudrec_ingest_reconnects",
                            "Push publishes of a uid that was publishing or had just left, by "
                            "kind", "ingest_reconnects", ["kind"])
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
        family: GaugeMetricFamily | CounterMetricFamily = (
            GaugeMetricFamily(name, doc, labels=labels) if gauge
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

    def __init__(self, front: FrontState) -> None:
        from prometheus_client import ProcessCollector, disable_created_metrics

        disable_created_metrics()  # no ``*_created`` series: Prometheus does not need them
        self.registry = CollectorRegistry()
        self.api = ApiMetrics(self.registry, front.node)
        self.registry.register(NodeCollector(front))
        ProcessCollector(registry=self.registry)  # the front process's own CPU and memory

    def render(self) -> bytes:
        return generate_latest(self.registry)


class IngressCollector(Collector):
    """Ingresses of the cluster (from the shared store) by kind and state, and their
    reconnects."""

    def __init__(self, store: Any, node: str) -> None:
        self.store = store
        self.node = node

    def collect(self) -> Iterator[Metric]:
        ingresses = GaugeMetricFamily("cloudrec_ingresses", "Ingresses, by kind and state",
                                      labels=["node", "kind", "state"])
        reconnects = CounterMetricFamily("cloudrec_ingress_reconnects",
                                         "Reconnects of ingresses not deleted, by kind",
                                         labels=["node", "kind"])
        try:
            counts = self.store.counts()
        except Exception:  # the database is away: leave the samples out
            counts = {}
        by_kind: dict[str, int] = {}
        for (kind, state), (n, r) in sorted(counts.items()):
            ingresses.add_metric([self.node, kind, state], float(n))
            by_kind[kind] = by_kind.get(kind, 0) + r
        for kind, r in sorted(by_kind.items()):
            reconnects.add_metric([self.node, kind], float(r))
        yield ingresses
        yield reconnects
