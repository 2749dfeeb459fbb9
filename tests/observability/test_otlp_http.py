"""Our OTLP/HTTP exporter against a real HTTP server: it posts the bytes of our
encoder (equal to the SDK's), with the settings the OTEL_* variables give,
and retries only what OTLP says to retry."""

from __future__ import annotations

import gzip
import ssl
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from cluster.observability.otlp_http import DEFAULT_ENDPOINT, OtlpHttpSpanExporter, exporter_settings
from cluster.observability.tracing import Tracing, _span_exporter


class _Collector(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real collectors do

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        server = self.server
        server.received.append((self.path, dict(self.headers), body))
        if server.hang.is_set():
            server.hang_release.wait(10)
        status = server.statuses.pop(0) if server.statuses else 200
        self.send_response(status)
        if status == 503:
            self.send_header("Retry-After", "0")
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        return None


@contextmanager
def running_collector(tls: ssl.SSLContext | None = None):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    server.daemon_threads = True
    server.received = []
    server.statuses = []
    server.hang = threading.Event()
    server.hang_release = threading.Event()
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.hang_release.set()
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def collector():
    with running_collector() as server:
        yield server


def url(server, path: str = "/v1/traces") -> str:
    return f"http://127.0.0.1:{server.server_port}{path}"


def some_spans():
    provider = TracerProvider(resource=Resource.create({"service.name": "test"}))
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("sipcluster")
    with tracer.start_as_current_span("edge.receive INVITE", kind=SpanKind.SERVER,
                                      attributes={"sip.call_id": "a@b", "network.peer.port": 5060}):
        with tracer.start_as_current_span("sip.route", attributes={"sip.node": "w-1"}):
            pass
    return memory.get_finished_spans()


def test_exporter_posts_our_bytes_equal_to_the_sdk_encoders(collector):
    spans = some_spans()
    exporter = OtlpHttpSpanExporter(url(collector), timeout=5)
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert exporter.export(spans) is SpanExportResult.SUCCESS  # over the kept-alive connection
    [(path, headers, body), _] = collector.received
    assert path == "/v1/traces" and headers["Content-Type"] == "application/x-protobuf"
    assert body == sdk_encode_spans(spans).SerializePartialToString()
    exporter.shutdown()


def test_settings_from_the_standard_variables():
    assert exporter_settings({})["endpoint"] == DEFAULT_ENDPOINT == "http://localhost:4318/v1/traces"
    assert exporter_settings({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"})["endpoint"] == \
        "http://c:4318/v1/traces"
    got = exporter_settings({
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://t/x",
        "OTEL_EXPORTER_OTLP_HEADERS": "a=1,b=x%20y,broken", "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "c=3",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "2500", "OTEL_EXPORTER_OTLP_COMPRESSION": "GZIP",
        "OTEL_EXPORTER_OTLP_CERTIFICATE": "/etc/ca.pem"})
    assert got == {"endpoint": "https://t/x", "headers": {"c": "3"}, "timeout": 2.5,
                   "compression": "gzip", "certificate": "/etc/ca.pem"}
    assert exporter_settings({"OTEL_EXPORTER_OTLP_HEADERS": "a=1,b=x%20y,broken"})["headers"] == \
        {"a": "1", "b": "x y"}
    assert exporter_settings({"OTEL_EXPORTER_OTLP_COMPRESSION": "zstd"})["compression"] == "none"
    assert "timeout" not in exporter_settings({"OTEL_EXPORTER_OTLP_TIMEOUT": "soon"})
    with pytest.raises(ValueError, match="not an http"):
        OtlpHttpSpanExporter("grpc://c:4317")


def test_headers_and_gzip_reach_the_collector(collector):
    spans = some_spans()
    exporter = OtlpHttpSpanExporter.from_environment({
        "OTEL_EXPORTER_OTLP_ENDPOINT": url(collector, ""), "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20t",
        "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip"})
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    [(path, headers, body)] = collector.received
    assert path == "/v1/traces" and headers["authorization"] == "Bearer t"
    assert headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(body) == sdk_encode_spans(spans).SerializePartialToString()


def test_a_refused_batch_fails_at_once_and_a_busy_collector_is_retried(collector):
    exporter = OtlpHttpSpanExporter(url(collector), timeout=5)
    collector.statuses = [400]
    assert exporter.export(some_spans()) is SpanExportResult.FAILURE
    assert len(collector.received) == 1  # 400 is not retried
    collector.statuses = [503, 200]  # Retry-After: 0
    assert exporter.export(some_spans()) is SpanExportResult.SUCCESS
    assert len(collector.received) == 3


def test_an_unreachable_collector_costs_the_batch_within_its_timeout(collector):
    exporter = OtlpHttpSpanExporter(url(collector), timeout=0.5)
    collector.hang.set()
    started = time.monotonic()
    assert exporter.export(some_spans()) is SpanExportResult.FAILURE
    assert time.monotonic() - started < 3
    collector.hang.clear()
    collector.hang_release.set()
    # The next batch opens a new connection and goes through.
    assert exporter.export(some_spans()) is SpanExportResult.SUCCESS


def test_nothing_is_posted_after_shutdown_or_for_a_batch_that_cannot_be_encoded(collector):
    provider = TracerProvider()
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    provider.get_tracer("t").start_span("bad \udcff").end()
    exporter = OtlpHttpSpanExporter(url(collector), timeout=5)
    assert exporter.export(memory.get_finished_spans()) is SpanExportResult.FAILURE
    exporter.shutdown()
    assert exporter.export(some_spans()) is SpanExportResult.FAILURE
    assert collector.received == []


def test_tracing_exports_otlp_with_our_exporter():
    exporter = _span_exporter("otlp", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
    assert type(exporter) is OtlpHttpSpanExporter and exporter.endpoint == "http://127.0.0.1:9/v1/traces"
    exporter.shutdown()
    assert _span_exporter("otlp", {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "collector:4318"}) is None


def test_spans_of_a_node_reach_the_collector_through_the_batch_processor(collector):
    tracing = Tracing.from_environment("edge", "e1", {"OTEL_EXPORTER_OTLP_ENDPOINT": url(collector, ""),
                                                      "OTEL_BSP_SCHEDULE_DELAY": "50"})
    assert tracing is not None
    tracing.edge_receive(b"call-1@example.com", b"OPTIONS sip:a@b SIP/2.0\r\nCSeq: 1 OPTIONS\r\n\r\n",
                         "UDP", ("192.0.2.1", 5060), "w-1").end()
    tracing.shutdown()
    assert collector.received and collector.received[0][0] == "/v1/traces"


def test_https_collector_verified_with_the_configured_ca(tmp_path):
    from tests.support.pki import make_pki
    pki = make_pki(tmp_path / "pki")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    with running_collector(context) as server:
        endpoint = f"https://127.0.0.1:{server.server_port}"
        trusted = OtlpHttpSpanExporter.from_environment({
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_CERTIFICATE": str(pki.ca),
            "OTEL_EXPORTER_OTLP_TIMEOUT": "3000"})
        assert trusted.export(some_spans()) is SpanExportResult.SUCCESS
        assert len(server.received) == 1
        # Without the CA (system trust store only) the collector is not trusted.
        untrusted = OtlpHttpSpanExporter(endpoint + "/v1/traces", timeout=30)
        started = time.monotonic()
        assert untrusted.export(some_spans()) is SpanExportResult.FAILURE
        assert time.monotonic() - started < 10  # not retried until the timeout
        assert len(server.received) == 1
