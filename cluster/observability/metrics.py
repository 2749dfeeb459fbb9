"""Per-node metrics: the OpenTelemetry SDK, read by Prometheus from ``/metrics`` (DESIGN §9).

The hot paths never call the SDK. A counter ``add()`` costs about 3 µs and a
histogram ``record()`` about 5 µs in the SDK, more than the edge spends on a
whole message. So the nodes bump plain ints and ``Counter`` entries where
messages flow, and everything reaches the SDK at scrape time:

- counters and gauges are *observable* instruments whose callbacks read
  those plain values when Prometheus scrapes;
- latency histograms are ``HotHistogram`` series: the hot path does one
  ``bisect`` and two additions; at scrape time the reader turns them into SDK
  ``Histogram`` points (the SDK has no observable histogram), so they go
  through the same OpenTelemetry → Prometheus translation as everything else.

Instrument names are the exported Prometheus names (counters end in
``_total``, histograms in their unit), so ``ops/`` dashboards and alerts can
be checked against ``MetricsEndpoint.names()``.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from typing import Callable, Iterable, Mapping

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality, Histogram, HistogramDataPoint, Metric, MetricsData, ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest

__all__ = [
    "LATENCY_BOUNDS", "ETCD_BOUNDS", "HistogramFamily", "HotHistogram", "MetricsEndpoint",
]

#: Seconds; link hops on one host are tens of µs, across hosts about a millisecond.
LATENCY_BOUNDS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                  0.05, 0.1, 0.25, 0.5, 1.0)
#: Seconds; an etcd round trip is about a millisecond, its unary deadline 3-5 s.
ETCD_BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

Reading = Iterable[tuple[float, Mapping[str, str]]]


class HotHistogram:
    """One histogram series fed from a hot path, in integer nanoseconds."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds_seconds: Iterable[float]) -> None:
        self.bounds = [int(b * 1e9) for b in bounds_seconds]
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0

    def observe_ns(self, ns: int) -> None:
        # Bucket i holds bounds[i-1] < v <= bounds[i] (Prometheus "le").
        self.counts[bisect_left(self.bounds, ns)] += 1
        self.total += ns


class _LockedHistogram(HotHistogram):
    """For values observed from worker threads (etcd calls)."""

    __slots__ = ("lock",)

    def __init__(self, bounds_seconds: Iterable[float]) -> None:
        super().__init__(bounds_seconds)
        self.lock = threading.Lock()

    def observe_ns(self, ns: int) -> None:
        with self.lock:
            self.counts[bisect_left(self.bounds, ns)] += 1
            self.total += ns


class HistogramFamily:
    """A named histogram with one ``HotHistogram`` per attribute set."""

    def __init__(self, name: str, description: str, bounds: Iterable[float], *,
                 threaded: bool = False) -> None:
        self.name = name
        self.description = description
        self.bounds = tuple(bounds)
        self._kind = _LockedHistogram if threaded else HotHistogram
        self._series: dict[tuple[tuple[str, str], ...], HotHistogram] = {}

    def series(self, **attributes: str) -> HotHistogram:
        """The series for ``attributes``; callers keep it and call ``observe_ns``."""
        key = tuple(sorted(attributes.items()))
        found = self._series.get(key)
        if found is None:
            found = self._series[key] = self._kind(self.bounds)
        return found

    def metric(self, start_ns: int, now_ns: int) -> Metric:
        points = []
        for key, series in list(self._series.items()):
            counts = list(series.counts)
            points.append(HistogramDataPoint(
                attributes=dict(key), start_time_unix_nano=start_ns, time_unix_nano=now_ns,
                count=sum(counts), sum=series.total / 1e9, bucket_counts=counts,
                explicit_bounds=self.bounds, min=0.0, max=0.0))
        return Metric(self.name, self.description, "s",
                      Histogram(points, AggregationTemporality.CUMULATIVE))


class _Reader(PrometheusMetricReader):
    """The Prometheus reader, plus the hot histograms at every collection."""

    def __init__(self, families: list[HistogramFamily], registry: CollectorRegistry,
                 resource: Resource) -> None:
        super().__init__(disable_target_info=False, scope_info_enabled=False, registry=registry)
        self._families = families
        self._resource = resource
        self._start_ns = time.time_ns()

    def _receive_metrics(self, metrics_data: MetricsData | None, timeout_millis: float = 10_000,
                         **kwargs) -> None:
        if self._families:
            now = time.time_ns()
            scope = ScopeMetrics(InstrumentationScope("sipcluster.hot"),
                                 [f.metric(self._start_ns, now) for f in self._families], "")
            if metrics_data is None or not metrics_data.resource_metrics:
                metrics_data = MetricsData([ResourceMetrics(self._resource, [scope], "")])
            else:
                first = metrics_data.resource_metrics[0]
                metrics_data = MetricsData([ResourceMetrics(
                    first.resource, [*first.scope_metrics, scope], first.schema_url),
                    *metrics_data.resource_metrics[1:]])
        super()._receive_metrics(metrics_data, timeout_millis, **kwargs)


class MetricsEndpoint:
    """One node's meter provider and its Prometheus text rendering."""

    def __init__(self, *, role: str, node_id: str) -> None:
        self.role = role
        self.node_id = node_id
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.registry)
        self._families: list[HistogramFamily] = []
        self._names: set[str] = set()
        resource = Resource.create({"service.name": f"sipcluster-{role}",
                                    "service.instance.id": node_id, "sipcluster.role": role})
        self.reader = _Reader(self._families, self.registry, resource)
        self.provider = MeterProvider(metric_readers=[self.reader], resource=resource)
        self.meter = self.provider.get_meter("sipcluster")
        # Always one instrument, so the SDK always hands the reader a
        # collection the hot histograms can join.
        self.gauge("sipcluster_node_info", "Always 1; labels name the node and its role.",
                   lambda: one(1, node=node_id, role=role))

    # -- declaring -----------------------------------------------------------------

    def counter(self, name: str, description: str, read: Callable[[], Reading]) -> None:
        """A monotonic counter (``name`` ends in ``_total``) read at scrape time."""
        assert name.endswith("_total"), name
        self._names.add(name)
        self.meter.create_observable_counter(name, [_callback(read, zero=True)], description=description)

    def gauge(self, name: str, description: str, read: Callable[[], Reading], unit: str = "") -> None:
        self._names.add(name)
        self.meter.create_observable_gauge(name, [_callback(read)], description=description, unit=unit)

    def histogram(self, name: str, description: str, bounds: Iterable[float] = LATENCY_BOUNDS, *,
                  threaded: bool = False) -> HistogramFamily:
        """A hot histogram in seconds (``name`` ends in ``_seconds``)."""
        assert name.endswith("_seconds"), name
        family = HistogramFamily(name, description, bounds, threaded=threaded)
        self._families.append(family)
        self._names.add(name)
        return family

    def names(self) -> frozenset[str]:
        """Every metric family this node exports (Prometheus names, without
        ``_bucket``/``_sum``/``_count``), the process collector's included."""
        return frozenset(self._names | set(PROCESS_METRICS))

    # -- reading -------------------------------------------------------------------

    def render(self) -> bytes:
        """Prometheus text exposition format 0.0.4."""
        return generate_latest(self.registry)

    def shutdown(self) -> None:
        self.provider.shutdown()


PROCESS_METRICS = (
    "process_cpu_seconds_total", "process_resident_memory_bytes", "process_virtual_memory_bytes",
    "process_start_time_seconds", "process_open_fds", "process_max_fds",
)


def _callback(read: Callable[[], Reading], *, zero: bool = False):
    def observe(options: CallbackOptions) -> list[Observation]:
        observations = [Observation(value, dict(attributes)) for value, attributes in read()]
        if not observations and zero:
            # A counter nothing has bumped yet still exists (at 0), so that
            # rate() and alerts see it from the first scrape.
            observations.append(Observation(0))
        return observations
    return observe


def one(value: float, **attributes: str) -> list[tuple[float, Mapping[str, str]]]:
    """A reading of a single series."""
    return [(value, attributes)]
