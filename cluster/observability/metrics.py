"""Per-node metrics, read by Prometheus from ``/metrics`` (DESIGN §9).

The hot paths never call a metrics library. They bump plain ints and
``Counter`` entries where messages flow, and ``HotHistogram`` series (one
``bisect`` and two additions per value); everything is read at scrape time:

- counters and gauges are callbacks that read those plain values;
- latency histograms hand over their buckets as they are.

``MetricsEndpoint`` is a ``prometheus_client`` custom collector (the
library's documented extension point: ``collect()`` yields metric families)
next to the library's process collector. Names are the exported Prometheus
names (counters end in ``_total``, histograms in their unit), so ``ops/``
dashboards and alerts can be checked against ``MetricsEndpoint.names()``.
"""

from __future__ import annotations

import logging
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric,
)
from prometheus_client.registry import Collector

__all__ = [
    "LATENCY_BOUNDS", "ETCD_BOUNDS", "HistogramFamily", "HotHistogram", "MetricsEndpoint", "one",
]

log = logging.getLogger("sipcluster.metrics")

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

    def reading(self) -> tuple[list[int], int]:
        """(count per bucket, the last one above every bound; total ns)."""
        return list(self.counts), self.total


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

    def reading(self) -> tuple[list[int], int]:
        with self.lock:
            return list(self.counts), self.total


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

    def family(self) -> HistogramMetricFamily:
        """The Prometheus family: each series' buckets made cumulative, "le" bounds."""
        names = sorted({name for key in self._series for name, _ in key})
        family = HistogramMetricFamily(self.name, self.description, labels=names)
        les = [repr(float(b)) for b in self.bounds] + ["+Inf"]
        for key, series in list(self._series.items()):
            counts, total = series.reading()
            cumulative, running = [], 0
            for le, count in zip(les, counts):
                running += count
                cumulative.append((le, running))
            values = dict(key)
            family.add_metric([values.get(name, "") for name in names], cumulative, total / 1e9)
        return family


Reader = Callable[[], Reading]


class MetricsEndpoint(Collector):
    """One node's metrics: a ``prometheus_client`` collector and its text rendering."""

    def __init__(self, *, role: str, node_id: str) -> None:
        self.role = role
        self.node_id = node_id
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.registry)
        self._instruments: list[tuple[str, str, str, Reader]] = []
        self._families: list[HistogramFamily] = []
        self._names: set[str] = set()
        self.gauge("target_info", "Target metadata",
                   lambda: one(1, service_instance_id=node_id, service_name=f"sipcluster-{role}",
                               sipcluster_role=role))
        self.gauge("sipcluster_node_info", "Always 1; labels name the node and its role.",
                   lambda: one(1, node=node_id, role=role))
        self.registry.register(self)

    # -- declaring -----------------------------------------------------------------

    def counter(self, name: str, description: str, read: Reader) -> None:
        """A monotonic counter (``name`` ends in ``_total``) read at scrape time."""
        assert name.endswith("_total"), name
        self._declare(name, "counter", description, read)

    def gauge(self, name: str, description: str, read: Reader) -> None:
        self._declare(name, "gauge", description, read)

    def histogram(self, family: HistogramFamily) -> HistogramFamily:
        """Export ``family`` (its ``name`` ends in its unit, ``_seconds``)."""
        assert family.name.endswith("_seconds"), family.name
        assert family.name not in self._names, family.name
        self._families.append(family)
        self._names.add(family.name)
        return family

    def _declare(self, name: str, kind: str, description: str, read: Reader) -> None:
        assert name not in self._names, name
        self._names.add(name)
        self._instruments.append((name, kind, description, read))

    def names(self) -> frozenset[str]:
        """Every metric family this node exports (Prometheus names, without
        ``_bucket``/``_sum``/``_count``), the process collector's included."""
        return frozenset(self._names | set(PROCESS_METRICS))

    # -- reading -------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        """``prometheus_client``'s ``Collector`` protocol: the families, read now.

        A reading that fails costs its own family in this scrape (logged),
        never the scrape or the node."""
        for name, kind, description, read in self._instruments:
            try:
                readings = [(value, dict(labels)) for value, labels in read()]
            except Exception:
                log.exception("metric %s could not be read", name)
                continue
            if not readings and kind == "counter":
                # A counter nothing has bumped yet still exists (at 0), so
                # that rate() and alerts see it from the first scrape.
                readings = [(0, {})]
            names = sorted({label for _, labels in readings for label in labels})
            family = (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(
                name, description, labels=names)
            for value, labels in readings:
                family.add_metric([str(labels.get(label, "")) for label in names], value)
            yield family
        for histogram in self._families:
            yield histogram.family()

    def render(self) -> bytes:
        """Prometheus text exposition format 0.0.4."""
        return generate_latest(self.registry)


PROCESS_METRICS = (
    "process_cpu_seconds_total", "process_resident_memory_bytes", "process_virtual_memory_bytes",
    "process_start_time_seconds", "process_open_fds", "process_max_fds",
)


def one(value: float, **attributes: str) -> list[tuple[float, Mapping[str, str]]]:
    """A reading of a single series."""
    return [(value, attributes)]
