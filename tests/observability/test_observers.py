"""Observers and wrappers passed in at construction: etcd clients report to
``EtcdMetrics``, the registrar's store and lookups are traced by wrappers,
and a node's metrics read what it owns (real etcd, real nodes, no patching)."""

from __future__ import annotations

import time

import pytest
import trio
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from cluster.config import load_config
from cluster.coordination import CoordinationError, EtcdStore
from cluster.observability.etcd import EtcdMetrics, TracedLocations, TracedLocationStore
from cluster.observability.metrics import MetricsEndpoint
from cluster.observability.tracing import RouteSpans, Tracing
from cluster.registrar import MemoryLocationStore, StoreUnavailable, register
from cluster.registrar.cache import LocationCache
from cluster.registrar.etcd_kv import EtcdKV
from cluster.registrar.etcd_store import EtcdLocationStore
from cluster.registrar.rules import RegistrarPolicy
from tests.e2e.harness import free_port_pair
from tests.registrar.samples import register_request
from tests.support.etcd import free_port


def scrape(endpoint: MetricsEndpoint) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(endpoint.render().decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def count(got, client: str, op: str) -> float:
    return got.get(("sipcluster_etcd_request_duration_seconds_count", (("client", client), ("op", op))), 0)


def test_etcd_store_reports_every_operation_to_its_observer(etcd_server):
    metrics = EtcdMetrics()
    endpoint = MetricsEndpoint(role="worker", node_id="w1")
    metrics.export(endpoint)
    dead = f"http://127.0.0.1:{free_port()}"

    async def main():
        store = EtcdStore(etcd_server.endpoint, observer=metrics.client("users"))
        broken = EtcdStore(dead, timeout=0.5, observer=metrics.client("membership"))
        try:
            await store.put("/obs-test/k", b"v")
            assert (await store.get("/obs-test/k")).value == b"v"
            with pytest.raises(CoordinationError):
                await broken.get("/obs-test/k")
        finally:
            store.close()
            broken.close()
    trio.run(main)
    got = scrape(endpoint)
    assert count(got, "users", "put") == 1 and count(got, "users", "get") == 1
    # A failed operation is measured and counted as an error.
    assert count(got, "membership", "get") == 1
    assert got[("sipcluster_etcd_errors_total", (("client", "membership"), ("op", "get")))] == 1
    assert ("sipcluster_etcd_errors_total", (("client", "users"), ("op", "get"))) not in got


def test_registrar_kv_reports_to_its_observer_with_spaces_as_underscores(etcd_server):
    metrics = EtcdMetrics()
    endpoint = MetricsEndpoint(role="worker", node_id="w1")
    metrics.export(endpoint)
    kv = EtcdKV(etcd_server.client(), observer=metrics.client("registrar"))
    dead = EtcdKV.of([f"http://127.0.0.1:{free_port()}"], metrics.client("location_cache"))
    try:
        assert kv.grant(30) > 0
        with pytest.raises(StoreUnavailable):
            dead.grant(30)
    finally:
        kv.close()
        dead.close()
    got = scrape(endpoint)
    assert count(got, "registrar", "lease_grant") == 1
    assert got[("sipcluster_etcd_errors_total", (("client", "location_cache"), ("op", "lease_grant")))] == 1
    with pytest.raises(ValueError, match="observer"):
        EtcdKV.of(kv, metrics.client("registrar"))


def test_store_and_cache_pass_their_observer_to_their_client(etcd_server):
    metrics = EtcdMetrics()
    endpoint = MetricsEndpoint(role="worker", node_id="w1")
    metrics.export(endpoint)

    async def main():
        store = EtcdLocationStore(lambda: etcd_server.client(), prefix=f"obs{time.time_ns()}",
                                  observer=metrics.client("registrar"))
        cache = LocationCache(lambda: etcd_server.client(), prefix="obs", observer=metrics.client("location_cache"))
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(store.run)
                await store.read("sip:alice@example.com")
                assert store.queued() == (0, 0)
                nursery.start_soon(cache.run)
                with trio.fail_after(20):
                    await cache.wait_for_revision(1)
                nursery.cancel_scope.cancel()
        finally:
            store.close()
            cache.close()
    trio.run(main)
    got = scrape(endpoint)
    assert count(got, "registrar", "range") == 1  # the one read, as one range request
    assert count(got, "location_cache", "range") >= 1  # its first full read


def traced(role: str = "worker") -> tuple[Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    found = Tracing.from_environment(role, "w1", {"OTEL_TRACES_EXPORTER": "otlp"},
                                     processors=[SimpleSpanProcessor(exporter)])
    assert found is not None
    return found, exporter


def test_traced_location_store_and_lookup_are_spans_under_the_current_one():
    tracing, spans = traced()
    memory = MemoryLocationStore()
    store = TracedLocationStore(memory, tracing)
    policy = RegistrarPolicy()

    async def main():
        with tracing.tracer.start_as_current_span("worker.transaction REGISTER"):
            result = await register(store, register_request(["<sip:alice@192.0.2.1:5060>"]),
                                    now=time.time(), policy=policy)
        assert result.status == 200
        assert await store.all_aors() == await memory.all_aors() != []
    trio.run(main)
    cache = LocationCache([f"http://127.0.0.1:{free_port()}"], prefix="obs")
    lookups = TracedLocations(cache, tracing)
    with tracing.tracer.start_as_current_span("worker.transaction INVITE"):
        assert lookups.lookup("sip:nobody@example.com", time.time()) == []
    assert lookups.lookup("sip:nobody@example.com", time.time()) == []  # untraced: no span
    cache.close()
    by_name = {s.name: s for s in spans.get_finished_spans()}
    parent = by_name["worker.transaction REGISTER"].context.span_id
    assert by_name["etcd location.read"].parent.span_id == parent
    assert by_name["etcd location.apply"].parent.span_id == parent
    assert by_name["etcd location.apply"].attributes["sip.registrar.conflict"] is False
    lookup = by_name["location.lookup"]
    assert lookup.parent.span_id == by_name["worker.transaction INVITE"].context.span_id
    assert lookup.attributes["sip.location.bindings"] == 0
    assert [s.name for s in spans.get_finished_spans()].count("location.lookup") == 1


def test_nodes_are_built_with_their_observers():
    from nodes.edge.metrics import edge_metrics
    from nodes.edge.node import EdgeNode
    from nodes.worker.metrics import worker_metrics
    from nodes.worker.node import WorkerNode
    port = free_port_pair()
    config = load_config(None, env={}, overrides={
        "edge.listen": [f"udp:127.0.0.1:{port}"], "cluster.node_id": "n1"})
    from nodes.worker.services import Services

    def services():
        return Services(domains=["localhost"], trusted=[], nonce_secret=b"s" * 32, nonce_ttl=300,
                        locations=None, users=None)
    tracing, _ = traced()
    edge = EdgeNode(config, tracing=tracing)
    worker = WorkerNode(config, tracing=tracing, services=services())
    plain = WorkerNode(config, services=services())
    try:
        assert edge.forwarder.tracing is tracing
        # Routing decisions are traced through the TU's observer hook; the
        # application itself is never wrapped.
        assert isinstance(worker.tu.observer, RouteSpans) and plain.tu.observer is None
        assert worker.application is plain.application
        # The hot paths observe into what the node owns; the scrape reads it.
        edge.turnaround.observe_ns(1_000)
        worker.processing_latency.observe_ns(1_000)
        worker.transaction_counts.calls_started += 3
        edge_got, worker_got = scrape(edge_metrics(edge)), scrape(worker_metrics(worker))
        assert edge_got[("sipcluster_hop_latency_seconds_count", (("hop", "edge_worker_edge"),))] == 1
        assert worker_got[("sipcluster_hop_latency_seconds_count", (("hop", "worker"),))] == 1
        assert worker_got[("sipcluster_calls_started_total", ())] == 3
    finally:
        for listener in edge.udp.values():
            listener.sock.close()
        for node in (edge, worker, plain):
            node.inbox.close()
