"""One trace per call: ids from the Call-ID, the same sampling decision on
every node, W3C trace context across the edge → worker → edge hops."""

from __future__ import annotations

import uuid
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

from cluster.app.api import Application
from cluster.link import Envelope, unpack
from cluster.observability.tracing import (
    RouteSpans, Tracing, describe_decision, format_traceparent, parse_traceparent, trace_id_for,
)
from cluster.sharding.ring import Ring
from cluster.sip import extract_call_id, parse_message
from nodes.edge.forwarder import Forwarder
from tests.sip.samples import INVITE, RESPONSE

ENDPOINT = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}


def tracing(role: str = "edge", ratio: str | None = None, node: str = "n1"):
    environ = dict(ENDPOINT)
    if ratio is not None:
        environ |= {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": ratio}
    exporter = InMemorySpanExporter()
    found = Tracing.from_environment(role, node, environ, processors=[SimpleSpanProcessor(exporter)])
    assert found is not None
    return found, exporter


# -- ids and sampling --------------------------------------------------------------


def test_trace_id_is_a_stable_128_bit_hash_of_the_call_id():
    a = trace_id_for(b"a84b4c76e66710@pc33.atlanta.com")
    assert a == trace_id_for("a84b4c76e66710@pc33.atlanta.com")
    assert 0 < a < 1 << 128 and a.bit_length() > 64
    assert a != trace_id_for(b"a84b4c76e66710@pc33.atlanta.co")


@given(st.binary(min_size=1, max_size=64))
def test_edge_bytes_and_worker_text_give_the_same_trace_id(call_id):
    # The worker parses with surrogateescape; the edge hashes raw bytes.
    assert trace_id_for(call_id) == trace_id_for(call_id.decode("utf-8", "surrogateescape"))


@settings(max_examples=300)
@given(st.text(min_size=1, max_size=40), st.sampled_from([0.001, 0.01, 0.3, 0.5, 0.99]))
def test_decision_is_the_sdk_ratio_samplers(call_id, ratio):
    node, _ = tracing(ratio=str(ratio))
    trace_id = trace_id_for(call_id)
    sdk = TraceIdRatioBased(ratio).should_sample(None, trace_id, "x").decision.is_sampled()
    assert node.sampled(trace_id) is sdk


def test_one_percent_is_sampled_and_spread_over_all_shards():
    node, _ = tracing(ratio="0.01")
    ring = Ring(["w1", "w2", "w3", "w4"])
    n = 40_000
    sampled = [c for c in (f"{i}-{uuid.uuid4().hex}".encode() for i in range(n))
               if node.sampled(trace_id_for(c))]
    # Binomial(40000, 0.01): mean 400, sd ~20.
    assert 300 <= len(sampled) <= 500
    # Independent of the ring's hash: every shard gets its share of traced calls.
    per_shard = Counter(ring.owner(c) for c in sampled)
    for member in ring.members:
        assert per_shard[member] >= 0.5 * ring.share(member) * len(sampled), per_shard


def test_every_node_takes_the_same_decision():
    edge, _ = tracing("edge", ratio="0.2", node="e1")
    worker, _ = tracing("worker", ratio="0.2", node="w1")
    ids = [trace_id_for(uuid.uuid4().hex) for _ in range(2000)]
    assert [edge.sampled(t) for t in ids] == [worker.sampled(t) for t in ids]
    assert 0 < sum(edge.sampled(t) for t in ids) < 2000


@pytest.mark.parametrize("environ", [
    {},
    {"OTEL_TRACES_EXPORTER": "none", **ENDPOINT},
    {"OTEL_SDK_DISABLED": "true", **ENDPOINT},
    {"OTEL_TRACES_SAMPLER": "always_off", **ENDPOINT},
    {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0", **ENDPOINT},
])
def test_tracing_is_off_without_an_exporter_or_when_disabled(environ):
    assert Tracing.from_environment("edge", "e1", environ) is None


def test_an_otlp_endpoint_turns_tracing_on_with_the_configured_ratio():
    found = Tracing.from_environment("worker", "w7", {
        **ENDPOINT, "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"})
    assert found is not None
    try:
        assert found.bound == TraceIdRatioBased(0.25).bound
        resource = found.provider.resource.attributes
        assert resource["service.name"] == "sipcluster-worker"
        assert resource["service.instance.id"] == "w7"
    finally:
        found.shutdown()


def test_traceparent_round_trip_and_rejects():
    text = format_traceparent(0xABC, 0x12)
    assert text == "00-00000000000000000000000000000abc-0000000000000012-01"
    context = parse_traceparent(text)
    assert (context.trace_id, context.span_id, context.is_remote, context.trace_flags.sampled) == \
        (0xABC, 0x12, True, True)
    for bad in (None, "", "01-" + text[3:], text[:-1], text.replace("0000000000000012", "0" * 16),
                text.upper()):
        assert parse_traceparent(bad) is None


# -- the hops --------------------------------------------------------------------------


class Outbox:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, endpoint, data) -> bool:
        self.sent.append(data)
        return True

    def connect(self, endpoint, server_key=None) -> None:
        pass

    def disconnect(self, endpoint) -> None:
        pass

    def endpoints(self):
        return []


def forwarder(node_tracing=None) -> tuple[Forwarder, Outbox]:
    outbox = Outbox()
    fwd = Forwarder("e1", outbox, max_message=65535, server="test", tracing=node_tracing)
    fwd.update(Ring(["w1"]), {"w1": "tcp://w1"})
    return fwd, outbox


def test_edge_span_traceparent_is_continued_by_the_worker_and_back():
    edge, edge_spans = tracing("edge", node="e1")
    worker, worker_spans = tracing("worker", node="w1")
    fwd, outbox = forwarder(edge)
    assert fwd.ingress(INVITE, "UDP", ("192.0.2.4", 5060), ("127.0.0.1", 5060), None) is None
    env = unpack(outbox.sent[0])
    (edge_span,) = edge_spans.get_finished_spans()
    call_id = extract_call_id(INVITE)
    assert edge_span.context.trace_id == trace_id_for(call_id)
    assert edge_span.parent is None and edge_span.name == "edge.receive INVITE"
    assert env.trace == format_traceparent(edge_span.context.trace_id, edge_span.context.span_id)
    attrs = edge_span.attributes
    assert attrs["sip.request.method"] == "INVITE" and attrs["sip.cseq"] == 314159
    assert attrs["sip.call_id"] == call_id.decode() and attrs["sip.shard"] == "w1"
    assert attrs["network.transport"] == "udp" and attrs["network.peer.address"] == "192.0.2.4"
    assert attrs["sip.node"] == "e1" and attrs["sip.request.uri"].startswith("sip:")

    message = parse_message(env.data)
    span = worker.worker_receive(message, env)
    with worker.use(span):
        with worker.child("sip.route x") as child:
            assert child is not None
        response = parse_message(RESPONSE.replace(b"180 Ringing", b"200 OK"))
        back = worker.outbound(response)
    spans = {s.name: s for s in worker_spans.get_finished_spans()}
    transaction = spans["worker.transaction INVITE"]
    assert transaction.context.trace_id == edge_span.context.trace_id
    assert transaction.parent.span_id == edge_span.context.span_id
    assert spans["sip.route x"].parent.span_id == transaction.context.span_id
    assert transaction.attributes["sip.shard"] == "w1"
    assert transaction.attributes["sip.response.status_code"] == 200
    assert back == format_traceparent(transaction.context.trace_id, transaction.context.span_id)

    out = Envelope("out", "e1", "UDP", ("192.0.2.4", 5060), ("127.0.0.1", 5060), response.to_bytes(),
                   trace=back, sender="w1")
    edge.edge_send(out)
    send = [s for s in edge_spans.get_finished_spans() if s.name.startswith("edge.send")][0]
    assert send.parent.span_id == transaction.context.span_id
    assert send.attributes["sip.response.status_code"] == 200


def test_unsampled_calls_create_no_span_and_no_traceparent():
    edge, spans = tracing("edge", ratio="0.000001")
    fwd, outbox = forwarder(edge)
    fwd.ingress(INVITE, "UDP", ("192.0.2.4", 5060), ("127.0.0.1", 5060), None)
    assert unpack(outbox.sent[0]).trace is None
    assert spans.get_finished_spans() == ()
    worker, worker_spans = tracing("worker", ratio="0.000001")
    assert worker.worker_receive(parse_message(INVITE), unpack(outbox.sent[0])) is None


def test_tracing_off_envelope_has_no_trace():
    fwd, outbox = forwarder(None)
    fwd.ingress(INVITE, "UDP", ("192.0.2.4", 5060), ("127.0.0.1", 5060), None)
    assert unpack(outbox.sent[0]).trace is None


def test_worker_starts_the_calls_trace_when_the_edge_did_not_trace():
    worker, spans = tracing("worker")
    env = Envelope("in", "e1", "TCP", ("192.0.2.4", 5060), ("127.0.0.1", 5060), INVITE)
    span = worker.worker_receive(parse_message(INVITE), env)
    span.end()
    (found,) = spans.get_finished_spans()
    assert found.context.trace_id == trace_id_for(extract_call_id(INVITE)) and found.parent is None
    # Outside any span (a timer fired), a sampled call's send still gets a traceparent.
    sent = worker.outbound(parse_message(INVITE))
    assert sent is not None and parse_traceparent(sent).trace_id == found.context.trace_id


class FakeCall:
    def reply(self, status: int):
        from cluster.app.api import Reply
        return Reply(status)


def test_route_span_names_the_handler_and_decision_only_for_traced_calls():
    worker, spans = tracing("worker")
    app = Application("demo")

    @app.request("OPTIONS")
    def answer(call):
        return call.reply(200)

    observer = RouteSpans(worker, app.name)
    key, answer_ = app.handler_for("OPTIONS")
    assert observer.handler(key, answer_, FakeCall()) is answer  # untraced: the handler itself
    with worker.use(worker.tracer.start_span("worker.transaction OPTIONS")):
        handler = observer.handler(key, answer_, FakeCall())
        assert handler is not answer
        decision = handler(FakeCall())
        assert app.handler_for("OPTIONS")[1] is answer  # the application itself is untouched
    assert decision.status == 200
    assert observer.handler(key, answer_, FakeCall()) is answer  # the message is done: untraced again
    route = [s for s in spans.get_finished_spans() if s.name == "sip.route answer"][0]
    parent = [s for s in spans.get_finished_spans() if s.name == "worker.transaction OPTIONS"][0]
    assert route.parent.span_id == parent.context.span_id
    assert route.attributes["sip.app.handler"].endswith("answer")
    assert route.attributes["sip.route.decision"] == "reply 200"
    assert route.attributes["sip.app"] == "demo"


def test_describe_decision():
    from cluster.app.api import Challenge, Proxy, Register, Reply, Target
    from cluster.sip import parse_uri
    assert describe_decision(Reply(486)) == "reply 486"
    assert describe_decision(Proxy((Target(parse_uri("sip:a@b")),), parallel=False)) == "proxy 1 serial"
    assert describe_decision(Challenge("x")) == "challenge"
    assert describe_decision(Register()) == "register"
    assert describe_decision(None) == "none"


def test_child_outside_a_recorded_span_creates_nothing():
    worker, spans = tracing("worker")
    assert trace.get_current_span().is_recording() is False
    with worker.child("etcd read") as span:
        assert span is None
    assert spans.get_finished_spans() == ()


def test_an_undecodable_call_id_is_exported_with_replacement_characters():
    from cluster.observability.otlp_encode import encode_spans
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    worker, spans = tracing("worker")
    data = INVITE.replace(b"Call-ID: ", b"Call-ID: \xff\xfe")
    message = parse_message(data)
    env = Envelope("in", "e1", "UDP", ("192.0.2.4", 5060), ("127.0.0.1", 5060), data)
    worker.worker_receive(message, env).end()
    (found,) = spans.get_finished_spans()
    call_id = found.attributes["sip.call_id"]
    assert call_id.startswith("\ufffd\ufffd") and call_id.encode("utf-8")
    decoded = ExportTraceServiceRequest.FromString(encode_spans([found]))
    exported = {a.key: a.value.string_value for a in decoded.resource_spans[0].scope_spans[0].spans[0].attributes}
    assert exported["sip.call_id"] == call_id
