"""A minimal OTLP/HTTP trace receiver: tests, benchmarks and a look at spans on a laptop.

It accepts ``POST /v1/traces`` with a protobuf ``ExportTraceServiceRequest``
(gzip or not), as OTLP/HTTP exporters (``otlp_http`` among them) send it, and
keeps each span as a flat ``ReceivedSpan``. Run it next to ``sipcluster up``::

    python -m cluster.observability.otlp_sink --port 4318 &
    OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 sipcluster up

and it prints one JSON line per span. Loopback only by default; it is a
debugging tool, not a collector.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest, ExportTraceServiceResponse,
)

__all__ = ["OtlpSink", "ReceivedSpan"]

_KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


@dataclass(frozen=True, slots=True)
class ReceivedSpan:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str
    service: str
    node: str
    start_ns: int
    end_ns: int
    attributes: dict = field(default_factory=dict)


def _value(any_value) -> object:
    kind = any_value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in any_value.kvlist_value.values}
    return getattr(any_value, kind)


def decode_request(body: bytes) -> list[ReceivedSpan]:
    """The spans of one ``ExportTraceServiceRequest``."""
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(ReceivedSpan(
                    trace_id=span.trace_id.hex(), span_id=span.span_id.hex(),
                    parent_span_id=span.parent_span_id.hex(), name=span.name,
                    kind=_KINDS.get(span.kind, str(span.kind)),
                    service=str(resource.get("service.name", "")),
                    node=str(resource.get("service.instance.id", "")),
                    start_ns=span.start_time_unix_nano, end_ns=span.end_time_unix_nano,
                    attributes={kv.key: _value(kv.value) for kv in span.attributes}))
    return spans


def count_spans(body: bytes) -> int:
    """How many spans one ``ExportTraceServiceRequest`` holds."""
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    return sum(len(scope.spans) for resource in request.resource_spans for scope in resource.scope_spans)


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class OtlpSink:
    """``with OtlpSink() as sink``: serving on ``sink.endpoint`` until the block ends.

    ``keep=False`` only counts spans; ``decode=False`` counts them without
    building ``ReceivedSpan`` objects (benchmarks: the receiver must take as
    little of the CPU the cluster is measured on as it can); ``on_span``
    sees each span.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, keep: bool = True,
                 decode: bool = True, on_span: Callable[[ReceivedSpan], None] | None = None) -> None:
        self.keep = keep
        self.decode = decode
        self.bytes = 0
        self.on_span = on_span
        self.spans: list[ReceivedSpan] = []
        self.count = 0
        self.requests = 0
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                if self.headers.get("Content-Encoding", "").lower() == "gzip":
                    body = gzip.decompress(body)
                if self.path.rstrip("/") != "/v1/traces":
                    self.send_error(404)
                    return
                try:
                    if sink.decode:
                        spans, count = decode_request(body), None
                    else:
                        spans, count = [], count_spans(body)
                except Exception:  # noqa: BLE001 - a bad body is the sender's problem
                    self.send_error(400)
                    return
                sink._add(spans, len(body), count)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args) -> None:
                pass

        self.server = _Server((host, port), Handler)
        self.endpoint = f"http://{host}:{self.server.server_address[1]}"
        self._thread: threading.Thread | None = None

    def _add(self, spans: list[ReceivedSpan], size: int = 0, count: int | None = None) -> None:
        with self._lock:
            self.requests += 1
            self.bytes += size
            self.count += len(spans) if count is None else count
            if self.keep:
                self.spans.extend(spans)
        if self.on_span is not None:
            for span in spans:
                self.on_span(span)

    def snapshot(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self.spans)

    def wait_for(self, predicate: Callable[[list[ReceivedSpan]], object], timeout: float = 30.0):
        """Poll until ``predicate(spans)`` is truthy; returns its value or raises AssertionError."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = predicate(self.snapshot())
            if last:
                return last
            time.sleep(0.05)
        raise AssertionError(f"spans not received within {timeout}s ({len(self.snapshot())} so far, last {last!r})")

    def start(self) -> OtlpSink:
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> OtlpSink:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.observability.otlp_sink",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4318)
    args = parser.parse_args(argv)

    def show(span: ReceivedSpan) -> None:
        print(json.dumps({"trace_id": span.trace_id, "span_id": span.span_id,
                          "parent": span.parent_span_id, "name": span.name, "node": span.node,
                          "ms": round((span.end_ns - span.start_ns) / 1e6, 3),
                          "attributes": span.attributes}), flush=True)

    sink = OtlpSink(args.host, args.port, keep=False, on_span=show)
    print(f"OTLP/HTTP sink on {sink.endpoint}/v1/traces", file=sys.stderr, flush=True)
    try:
        sink.server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
