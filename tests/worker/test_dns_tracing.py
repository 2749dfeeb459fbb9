"""Tracing across the DNS wait: the INVITE's forwarding waits for RFC 3263
location, and what is sent once the answer is back still belongs to the
INVITE's span (the forwarded request's traceparent names it), with a
``dns.locate`` span for the location itself under the same span.

A real WorkerNode in trio, tracing to memory, its DNS a dnsmasq on a
loopback port (tests/support/dns.py); its PUSH sockets are replaced by a
list."""

from __future__ import annotations

import time

import pytest
import trio
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from cluster.app.api import Application
from cluster.config import load_config
from cluster.link import Envelope, pack, unpack
from cluster.observability.tracing import Tracing, parse_traceparent
from cluster.sip import parse_message
from nodes.worker.node import WorkerNode
from nodes.worker.services import Services
from tests.support.dns import Dnsmasq

from .test_cancel_without_context import CALLER, EDGE, EDGE_ADDR, Sent, _request


@pytest.fixture(scope="module")
def dnsmasq():
    server = Dnsmasq(["host-record=gw.carrier.test,127.0.0.1"]).start()
    yield server
    server.close()


def carrier() -> Application:
    app = Application("carrier")

    @app.request("INVITE")
    def to_gateway(call):
        return call.proxy(["sip:carol@gw.carrier.test:5070"])

    return app


def traced_worker(dns_server: str) -> tuple[WorkerNode, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing = Tracing.from_environment("worker", "w-dns", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"},
                                       processors=[SimpleSpanProcessor(exporter)])
    assert tracing is not None
    services = Services(domains=["localhost"], trusted=["127.0.0.0/8"],
                        nonce_secret=b"test-nonce-secret-0123456", nonce_ttl=300, locations=None, users=None)
    config = load_config(None, env={}, overrides={"cluster.node_id": "w-dns", "dns.servers": dns_server,
                                                  "dns.timeout": 2.0, "dns.lifetime": 4.0})
    worker = WorkerNode(config, carrier(), services=services, tracing=tracing)
    worker.inbox.close()
    worker.links.outbox = Sent()
    worker.links.edges = {EDGE: "sink"}
    return worker, exporter


def forward_after_dns(worker: WorkerNode) -> list[Envelope]:
    """Feed the INVITE, let its location run, then the timer run that
    answers it (bounded waits); the envelopes sent."""
    async def main():
        async with trio.open_nursery() as nursery:
            worker._nursery = nursery
            env = unpack(pack(Envelope("in", EDGE, "UDP", CALLER, EDGE_ADDR, _request("INVITE"), None,
                                       time.time_ns(), None, "127.0.0.1:5060", EDGE)))
            worker.receive(env, trio.current_time())
            with trio.fail_after(20):
                while not worker.tu.locating.delivered:
                    await trio.sleep(0.01)
            worker.on_timers(trio.current_time())
            nursery.cancel_scope.cancel()
    trio.run(main)
    return [unpack(frame) for frame in worker.links.outbox.frames]


def test_the_forwarded_request_is_traced_under_the_span_of_the_request_that_waited(dnsmasq):
    worker, exporter = traced_worker(dnsmasq.server)
    sent = forward_after_dns(worker)
    (invite,) = [env for env in sent if getattr(parse_message(env.data), "method", "") == "INVITE"]
    assert parse_message(invite.data).uri.host == "gw.carrier.test"
    spans = exporter.get_finished_spans()
    (transaction,) = [s for s in spans if s.name == "worker.transaction INVITE"]
    parent = parse_traceparent(invite.trace)
    assert parent is not None and parent.span_id == transaction.context.span_id, \
        "the INVITE's send continues the INVITE's span, not a new root"
    assert not [s for s in spans if s.name == "worker.send"], "no orphan span for the send"
    (locate,) = [s for s in spans if s.name == "dns.locate"]
    assert locate.parent.span_id == transaction.context.span_id
    assert locate.attributes["dns.target"] == "gw.carrier.test"
    assert locate.attributes["dns.destinations"] == 1
    assert worker.stats["internal_error"] == 0
