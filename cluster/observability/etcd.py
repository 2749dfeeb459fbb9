"""etcd operation latency, errors and spans, measured at each client's one error boundary.

Both etcd adapters funnel every call through one method: ``EtcdStore._translated``
(membership, user feed) and ``EtcdKV._call`` (registrar store, location
cache). The node wraps that method on its own instances at start-up, so the
adapters carry no metrics code and every operation is measured, including
those that fail. Watch receives wait for news by design: they count as
operations for errors, never for latency.

For spans, the registrar's reads and writes are wrapped where the call's
task awaits them (``EtcdLocationStore.read/apply``): the store batches many
calls into one etcd transaction on its own task, so the span a call sees is
its wait for that batch, which is what its latency is made of.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import TYPE_CHECKING, Any, Callable

from opentelemetry.trace import SpanKind

from cluster.coordination.errors import EtcdAuthError

if TYPE_CHECKING:  # pragma: no cover
    from .metrics import HistogramFamily
    from .tracing import Tracing

__all__ = ["EtcdErrors", "instrument_kv", "instrument_store", "trace_location_cache",
           "trace_location_store"]


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


def _measured(client: str, original: Callable, latency: HistogramFamily, errors: EtcdErrors,
              *, op_of: Callable[[tuple], str]) -> Callable:
    def call(*args: Any) -> Any:
        op = op_of(args)
        started = time.perf_counter_ns()
        try:
            return original(*args)
        except BaseException as error:
            errors.add(client, op, auth=isinstance(error, EtcdAuthError))
            raise
        finally:
            if op != "watch":
                latency.series(client=client, op=op).observe_ns(time.perf_counter_ns() - started)
    return call


def instrument_store(store: Any, client: str, latency: HistogramFamily, errors: EtcdErrors) -> None:
    """Measure every operation of a ``cluster.coordination.EtcdStore``."""
    store._translated = _measured(client, store._translated, latency, errors,
                                  op_of=lambda args: str(args[0]))


def instrument_kv(kv: Any, client: str, latency: HistogramFamily, errors: EtcdErrors) -> None:
    """Measure every operation of a ``cluster.registrar.etcd_kv.EtcdKV``."""
    kv._call = _measured(client, kv._call, latency, errors,
                         op_of=lambda args: str(args[0]).replace(" ", "_"))


def trace_location_store(store: Any, tracing: Tracing) -> None:
    """``etcd location.read`` / ``etcd location.apply`` spans under the current span."""
    read, apply = store.read, store.apply

    async def traced_read(aor: str):
        with tracing.child("etcd location.read", {"db.system": "etcd", "db.operation": "read",
                                                  "sip.aor": aor}, kind=SpanKind.CLIENT):
            return await read(aor)

    async def traced_apply(aor: str, puts, deletes, *, expect):
        puts = list(puts)
        deletes = list(deletes)
        with tracing.child("etcd location.apply", {
                "db.system": "etcd", "db.operation": "txn", "sip.aor": aor,
                "sip.registrar.puts": len(puts), "sip.registrar.deletes": len(deletes)},
                kind=SpanKind.CLIENT) as span:
            revision = await apply(aor, puts, deletes, expect=expect)
            if span is not None:
                span.set_attribute("sip.registrar.conflict", revision is None)
            return revision

    store.read, store.apply = traced_read, traced_apply


def trace_location_cache(cache: Any, tracing: Tracing) -> None:
    """``location.lookup`` spans (a local cache read) under the current span."""
    lookup = cache.lookup

    def traced_lookup(aor: str, now: float):
        with tracing.child("location.lookup", {"sip.aor": aor}) as span:
            bindings = lookup(aor, now)
            if span is not None:
                span.set_attribute("sip.location.bindings", len(bindings))
            return bindings

    cache.lookup = traced_lookup
