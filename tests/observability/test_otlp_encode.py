"""The hand-written OTLP encoder against the SDK's: the official encoder's
message (and its serialization) is the oracle for every batch."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState,
)

from cluster.observability import otlp_encode
from cluster.observability.otlp_encode import encode_spans
from cluster.observability.tracing import Tracing
from tests.sip.samples import INVITE

INT64_MAX = (1 << 63) - 1
INT64_MIN = -(1 << 63)


def provider(attributes: dict | None = None, limits: SpanLimits | None = None):
    exporter = InMemorySpanExporter()
    found = TracerProvider(resource=Resource.create(attributes or {"service.name": "test"}),
                           span_limits=limits)
    found.add_span_processor(SimpleSpanProcessor(exporter))
    return found, exporter


def assert_like_sdk(spans) -> bytes:
    ours = encode_spans(spans)
    theirs = sdk_encode_spans(spans)
    assert ExportTraceServiceRequest.FromString(ours) == theirs
    # The module promises the very bytes, not only an equal message.
    assert ours == theirs.SerializePartialToString()
    return ours


def remote(trace_id: int = 0x0AF7651916CD43DD8448EB211C80319C, span_id: int = 0xB7AD6B7169203331,
           state: TraceState | None = None):
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(1),
                       trace_state=state)


# -- spans -------------------------------------------------------------------------------


def test_an_empty_batch_is_an_empty_request():
    assert assert_like_sdk([]) == b""


def test_root_and_child_spans_of_every_kind():
    tp, exporter = provider()
    tracer = tp.get_tracer("sipcluster")
    with tracer.start_as_current_span("root", kind=SpanKind.SERVER):
        for kind in SpanKind:
            with tracer.start_as_current_span(f"child {kind.name}", kind=kind):
                pass
    spans = exporter.get_finished_spans()
    assert len(spans) == 1 + len(SpanKind)
    decoded = ExportTraceServiceRequest.FromString(assert_like_sdk(spans))
    encoded = decoded.resource_spans[0].scope_spans[0].spans
    root = encoded[-1]
    assert root.parent_span_id == b"" and root.flags == 0x100
    assert [s.kind for s in encoded[:-1]] == [k.value + 1 for k in SpanKind]
    assert all(s.parent_span_id == root.span_id for s in encoded[:-1])


def test_remote_parent_sets_the_remote_flag_and_keeps_the_trace_state():
    tp, exporter = provider()
    tracer = tp.get_tracer("sipcluster")
    parent = remote(state=TraceState([("vendor", "abc"), ("other", "1")]))
    tracer.start_span("worker.transaction INVITE", kind=SpanKind.CONSUMER,
                      context=trace.set_span_in_context(NonRecordingSpan(parent))).end()
    decoded = ExportTraceServiceRequest.FromString(assert_like_sdk(exporter.get_finished_spans()))
    span = decoded.resource_spans[0].scope_spans[0].spans[0]
    assert span.flags == 0x300
    assert span.parent_span_id == parent.span_id.to_bytes(8, "big")
    assert span.trace_id == parent.trace_id.to_bytes(16, "big")
    assert span.trace_state == "vendor=abc,other=1"


LONG = "x" * 300
ATTRIBUTES = {
    "str": "INVITE", "empty": "", "unicode": "Ä€😀", "long": LONG, "x" * 200: "long key",
    "bool.true": True, "bool.false": False,
    "int.zero": 0, "int.small": 127, "int.two_bytes": 128, "int.port": 5060, "int.big": 16384,
    "int.max": INT64_MAX, "int.min": INT64_MIN, "int.negative": -1,
    "float": 1.5, "float.zero": -0.0, "float.inf": math.inf, "float.nan": math.nan,
    "array.str": ("a", "", "ü"), "array.bool": (True, False), "array.int": (1, -1, INT64_MAX),
    "array.float": (0.5, -2.25), "array.empty": (), "array.none": (None, "x"),
    "array.long": tuple(range(2000)),
}


def test_attributes_of_every_type():
    tp, exporter = provider()
    tp.get_tracer("t").start_span("s", attributes=ATTRIBUTES).end()
    spans = exporter.get_finished_spans()
    decoded = ExportTraceServiceRequest.FromString(assert_like_sdk(spans))
    attributes = decoded.resource_spans[0].scope_spans[0].spans[0].attributes
    assert len(attributes) == len(ATTRIBUTES)
    by_key = {kv.key: kv.value for kv in attributes}
    assert by_key["int.min"].int_value == INT64_MIN
    assert by_key["array.long"].array_value.values[1999].int_value == 1999


def test_values_the_sdk_cannot_encode_are_left_out_like_the_sdk_does():
    tp, exporter = provider()
    tp.get_tracer("t").start_span("s", attributes={
        "ok": 1, "too.big": 1 << 63, "too.small": INT64_MIN - 1, "surrogate": "\udcff",
        "array.too.big": (1, 1 << 64), "after": "kept"}).end()
    decoded = ExportTraceServiceRequest.FromString(assert_like_sdk(exporter.get_finished_spans()))
    keys = [kv.key for kv in decoded.resource_spans[0].scope_spans[0].spans[0].attributes]
    assert keys == ["ok", "after"]


def test_a_name_the_sdk_cannot_encode_fails_the_batch_as_the_sdk_does():
    tp, exporter = provider()
    tp.get_tracer("t").start_span("bad \udcff").end()
    spans = exporter.get_finished_spans()
    with pytest.raises(ValueError):
        sdk_encode_spans(spans)
    with pytest.raises(ValueError):
        encode_spans(spans)


def test_events_links_and_status():
    tp, exporter = provider()
    tracer = tp.get_tracer("t")
    linked_remote = remote(state=TraceState([("k", "v")]))
    linked_local = SpanContext(5, 6, is_remote=False)
    span = tracer.start_span("s", links=[Link(linked_remote, {"why": "forked", "n": 2}),
                                         Link(linked_local)])
    span.add_event("retransmit", {"timer": "A", "count": 3}, timestamp=1_700_000_000_000_000_001)
    span.add_event("", {})
    span.add_event("no attributes")
    span.record_exception(ValueError("boom"))
    span.set_status(Status(StatusCode.ERROR, "503 Service Unavailable"))
    span.end()
    ok = tracer.start_span("ok")
    ok.set_status(Status(StatusCode.OK))
    ok.end()
    error = tracer.start_span("error without message")
    error.set_status(Status(StatusCode.ERROR))
    error.end()
    decoded = ExportTraceServiceRequest.FromString(assert_like_sdk(exporter.get_finished_spans()))
    first, second, third = decoded.resource_spans[0].scope_spans[0].spans
    assert [e.name for e in first.events] == ["retransmit", "", "no attributes", "exception"]
    assert [link.flags for link in first.links] == [0x300, 0x100]
    assert first.status.code == 2 and first.status.message == "503 Service Unavailable"
    assert second.status.code == 1 and third.status.code == 2 and third.status.message == ""


def test_dropped_counts_are_sent():
    limits = SpanLimits(max_span_attributes=2, max_events=1, max_links=1,
                        max_event_attributes=1, max_link_attributes=1)
    tp, exporter = provider(limits=limits)
    span = tp.get_tracer("t").start_span(
        "s", attributes={"a": 1, "b": 2, "c": 3},
        links=[Link(remote(span_id=7)), Link(remote(), {"x": 1, "y": 2})])
    span.add_event("one")
    span.add_event("two", {"x": 1, "y": 2, "z": 3})
    span.end()
    decoded = ExportTraceServiceRequest.FromString(assert_like_sdk(exporter.get_finished_spans()))
    encoded = decoded.resource_spans[0].scope_spans[0].spans[0]
    assert (encoded.dropped_attributes_count, encoded.dropped_events_count,
            encoded.dropped_links_count) == (1, 1, 1)
    # The bounded lists keep the newest entries.
    assert encoded.links[0].dropped_attributes_count == 1
    assert encoded.events[0].name == "two" and encoded.events[0].dropped_attributes_count == 2


def test_several_resources_and_scopes_group_like_the_sdk():
    first, first_spans = provider({"service.name": "edge", "service.instance.id": "e1"})
    second, second_spans = provider({"service.name": "worker"})
    # An equal resource in another object: the SDK's dict puts it in the same group.
    twin, twin_spans = provider({"service.name": "edge", "service.instance.id": "e1"})
    scoped = first.get_tracer("scoped", "1.2.3", schema_url="https://opentelemetry.io/schemas/1.21.0",
                              attributes={"scope.attr": "v", "n": 1})
    plain = first.get_tracer("plain")
    scoped.start_span("a").end()
    second.get_tracer("w").start_span("b").end()
    plain.start_span("c").end()
    twin.get_tracer("scoped", "1.2.3", schema_url="https://opentelemetry.io/schemas/1.21.0",
                    attributes={"scope.attr": "v", "n": 1}).start_span("d").end()
    scoped.start_span("e").end()
    spans = [first_spans.get_finished_spans()[0], second_spans.get_finished_spans()[0],
             first_spans.get_finished_spans()[1], twin_spans.get_finished_spans()[0],
             first_spans.get_finished_spans()[2]]
    decoded = ExportTraceServiceRequest.FromString(assert_like_sdk(spans))
    assert [[[s.name for s in ss.spans] for ss in rs.scope_spans] for rs in decoded.resource_spans] == [
        [["a", "d", "e"], ["c"]], [["b"]]]
    scope = decoded.resource_spans[0].scope_spans[0]
    assert scope.scope.version == "1.2.3" and scope.schema_url.endswith("1.21.0")


def test_resource_schema_url_missing_scope_unended_span_and_other_span_classes():
    class Recorded(ReadableSpan):
        """Not an SDK class: read through the public properties."""

    resource = Resource({"a": "b"}, schema_url="https://example.com/schema")
    context = SpanContext(1 << 100, 3, is_remote=False)
    spans = [
        ReadableSpan("no scope", context=context, resource=resource, start_time=10),
        Recorded("subclass", context=context, resource=resource, parent=remote(), kind=SpanKind.PRODUCER,
                 attributes={"k": "v"}, start_time=1, end_time=2,
                 instrumentation_scope=InstrumentationScope("lib", None)),
    ]
    assert type(spans[1]) not in otlp_encode._SDK_SPANS
    decoded = ExportTraceServiceRequest.FromString(assert_like_sdk(spans))
    assert decoded.resource_spans[0].schema_url == "https://example.com/schema"


def test_cached_headers_follow_new_resources_and_scopes():
    for i in range(otlp_encode._HEADER_CACHE_SIZE + 6):
        tp, exporter = provider({"service.name": f"svc-{i}"})
        tp.get_tracer(f"scope-{i}", str(i)).start_span("s").end()
        tp.get_tracer(f"scope-{i}", str(i)).start_span("s").end()
        assert_like_sdk(exporter.get_finished_spans())
    assert len(otlp_encode._resources) <= otlp_encode._HEADER_CACHE_SIZE


def test_our_edge_spans():
    exporter = InMemorySpanExporter()
    tracing = Tracing.from_environment("edge", "edge-1", {"OTEL_TRACES_SAMPLER": "parentbased_always_on"},
                                       processors=[SimpleSpanProcessor(exporter)])
    for i in range(20):
        tracing.edge_receive(b"call-%d@example.com" % i, INVITE, "UDP", ("192.0.2.1", 5060), "w-1").end()
    spans = exporter.get_finished_spans()
    assert len(spans[0].attributes) >= 8
    assert_like_sdk(spans)
    assert_like_sdk(spans[:1])


# -- generated attributes ------------------------------------------------------------------

_TEXT = st.text(max_size=40)
_INT = st.integers(INT64_MIN, INT64_MAX)
_FLOAT = st.floats(allow_nan=True, allow_infinity=True)
_SCALAR = st.one_of(_TEXT, st.booleans(), _INT, _FLOAT)
_VALUE = st.one_of(_SCALAR, *(st.lists(s, max_size=6) for s in (_TEXT, st.booleans(), _INT, _FLOAT)))
_HYPOTHESIS_PROVIDER, _HYPOTHESIS_SPANS = provider({"service.name": "hypothesis"})


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=30), _VALUE, max_size=12),
       st.dictionaries(st.text(min_size=1, max_size=10), _SCALAR, max_size=3))
def test_generated_attributes_encode_like_the_sdk(attributes, event_attributes):
    _HYPOTHESIS_SPANS.clear()
    span = _HYPOTHESIS_PROVIDER.get_tracer("h").start_span("generated", attributes=attributes)
    span.add_event("e", event_attributes)
    span.end()
    spans = _HYPOTHESIS_SPANS.get_finished_spans()
    assert len(spans) == 1
    assert_like_sdk(spans)
