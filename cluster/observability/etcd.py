"""etcd operation latency, errors and spans: observers and wrappers the node passes in.

Every etcd client runs its operations through one error boundary, its
``EtcdConnection``, which reports each to the ``EtcdObserver`` it was built
with (``cluster.coordination.observer``): ``EtcdStore`` (membership, user
feed) and ``EtcdKV`` (registrar store, location cache) take one at
construction. ``EtcdMetrics.client(name)`` is that observer for one client,
so every operation is measured, including those that fail, and those etcd
refused for who the node is (``EtcdAuthError``) are counted apart. Watch
receives wait for news by design: they count as operations for errors,
never for latency.

For spans, the registrar's reads and writes are traced where the call's
task awaits them: ``TracedLocationStore`` is a ``LocationStore`` around the
etcd one (the store batches many calls into one etcd transaction on its own
task, so the span a call sees is its wait for that batch, which is what its
latency is made of); ``TracedLocations`` is the location lookup the
routing services use, around the cache.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from opentelemetry.trace import SpanKind

from cluster.coordination.errors import EtcdAuthError

from .metrics import ETCD_BOUNDS, HistogramFamily

if TYPE_CHECKING:  # pragma: no cover
    from cluster.registrar import Binding
    from cluster.registrar.cache import LocationCache
    from cluster.registrar.store import AorState, LocationStore

    from .metrics import MetricsEndpoint
    from .tracing import Tracing

__all__ = ["EtcdErrors", "EtcdMetrics", "TracedLocationStore", "TracedLocations"]


class EtcdErrors:
    """Failed etcd operations by (client, op), and of those the ones etcd
    refused for who we are (``EtcdAuthError``: wrong password, token,
    permission, client certificate) by client; safe from worker threads."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self.auth: Counter[str] = Counter()
        self._lock = threading.Lock()

    def add(self, client: str, op: str, *, auth: bool = False) -> None:
        with self._lock:
            self.counts[(client, op)] += 1
            if auth:
                self.auth[client] += 1

    def snapshot(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self.counts)

    def auth_snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.auth)


class EtcdMetrics:
    """One node's etcd latency and errors, over all its clients."""

    def __init__(self) -> None:
        self.latency = HistogramFamily(
            "sipcluster_etcd_request_duration_seconds",
            "etcd operations (not watch waits) by client and operation, including failed ones.",
            ETCD_BOUNDS, threaded=True)
        self.errors = EtcdErrors()

    def client(self, name: str) -> EtcdClientObserver:
        """The ``EtcdObserver`` to build client ``name`` with."""
        return EtcdClientObserver(name, self)

    def export(self, endpoint: MetricsEndpoint) -> None:
        endpoint.histogram(self.latency)
        errors = self.errors
        endpoint.counter("sipcluster_etcd_errors_total", "Failed etcd operations by client and operation.",
                         lambda: [(v, {"client": c, "op": o}) for (c, o), v in errors.snapshot().items()])
        endpoint.counter("sipcluster_etcd_auth_failures_total",
                         "etcd operations refused for who the node is (wrong password, rejected token, missing "
                         "permission, expired client certificate), by client; also in sipcluster_etcd_errors_total.",
                         lambda: [(v, {"client": c}) for c, v in errors.auth_snapshot().items()])


class EtcdClientObserver:
    """``EtcdObserver`` of one client: latency by operation, failures counted."""

    __slots__ = ("name", "_metrics")

    def __init__(self, name: str, metrics: EtcdMetrics) -> None:
        self.name = name
        self._metrics = metrics

    def operation(self, op: str, elapsed_ns: int, error: BaseException | None) -> None:
        op = op.replace(" ", "_")
        if error is not None:
            self._metrics.errors.add(self.name, op, auth=isinstance(error, EtcdAuthError))
        if op != "watch":
            self._metrics.latency.series(client=self.name, op=op).observe_ns(elapsed_ns)


class TracedLocationStore:
    """A ``LocationStore`` whose reads and writes are ``etcd location.read`` /
    ``etcd location.apply`` spans under the current span."""

    def __init__(self, store: LocationStore, tracing: Tracing) -> None:
        self._store = store
        self._tracing = tracing

    async def bindings(self, aor: str, *, now: float) -> list[Binding]:
        return (await self.read(aor)).live(now)

    async def read(self, aor: str) -> AorState:
        with self._tracing.child("etcd location.read", {"db.system": "etcd", "db.operation": "read",
                                                        "sip.aor": aor}, kind=SpanKind.CLIENT):
            return await self._store.read(aor)

    async def apply(self, aor: str, puts: Iterable[Binding], deletes: Iterable[str], *,
                    expect: Any) -> int | None:
        puts = list(puts)
        deletes = list(deletes)
        with self._tracing.child("etcd location.apply", {
                "db.system": "etcd", "db.operation": "txn", "sip.aor": aor,
                "sip.registrar.puts": len(puts), "sip.registrar.deletes": len(deletes)},
                kind=SpanKind.CLIENT) as span:
            revision = await self._store.apply(aor, puts, deletes, expect=expect)
            if span is not None:
                span.set_attribute("sip.registrar.conflict", revision is None)
            return revision

    async def all_aors(self) -> list[str]:
        return await self._store.all_aors()


class TracedLocations:
    """The cache's ``lookup`` as a ``location.lookup`` span (a local read) under the current span."""

    def __init__(self, cache: LocationCache, tracing: Tracing) -> None:
        self._cache = cache
        self._tracing = tracing

    def lookup(self, aor: str, now: float) -> list[Binding]:
        with self._tracing.child("location.lookup", {"sip.aor": aor}) as span:
            bindings = self._cache.lookup(aor, now)
            if span is not None:
                span.set_attribute("sip.location.bindings", len(bindings))
            return bindings
