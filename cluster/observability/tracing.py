"""One OpenTelemetry trace per call, across every node, with no shared state (DESIGN §9).

The trace id of a call is the first 16 bytes of ``blake2b(Call-ID)``: every
edge and worker that sees a message of the call computes the same id on its
own, so every span of every transaction of the call (INVITE, CANCEL, ACK,
BYE, re-INVITE) lands in one trace. The ratio sampler looks only at the trace
id (its low 64 bits), so every node takes the same sampling decision for the
same call without asking anyone. The digest size differs from the ring's
(8 bytes), which makes the two hashes independent: the 1 % of calls that are
sampled spread over all shards.

Enabling and configuring it uses only the standard variables:

- tracing is on when ``OTEL_TRACES_EXPORTER`` names an exporter (``otlp``,
  ``console``) or, when it is unset, when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
  ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set. ``OTEL_TRACES_EXPORTER=none``
  or ``OTEL_SDK_DISABLED=true`` turns it off. Off, the hot paths test one
  attribute (``tracing is None``) and create no span objects.
- OTLP goes over HTTP/protobuf (``otlp_http``; gRPC is not offered);
  endpoint, headers, timeout, compression and CA certificate come from
  ``OTEL_EXPORTER_OTLP_*``; batching from ``OTEL_BSP_*``.
- ``OTEL_TRACES_SAMPLER`` (``parentbased_traceidratio`` with
  ``OTEL_TRACES_SAMPLER_ARG=0.01`` for 1 %; default ``parentbased_always_on``;
  ``always_off`` turns tracing off).
- ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES``; the default service
  name is ``sipcluster-edge`` or ``sipcluster-worker``, ``service.instance.id``
  is the node id.

Spans (names carry the method, or the status and CSeq method of a response):

====================================  ==========  =====================================
``edge.receive <what>``               SERVER      edge: a message read from the network
``worker.transaction <what>``         CONSUMER    worker: the message in its transaction
``sip.route <handler>``               INTERNAL    worker: the application's decision
``registrar.register``                INTERNAL    worker: §10.3 processing of a REGISTER
``location.lookup``                   INTERNAL    worker: location cache read
``dns.locate``                        INTERNAL    worker: RFC 3263 location of a next hop
``etcd <op>``                         CLIENT      worker: etcd round trips of a call
``edge.send <what>``                  CLIENT      edge: a message written to the network
====================================  ==========  =====================================

The envelope carries the W3C ``traceparent`` of the span that produced it:
edge → worker (the worker continues the edge's span) and worker → edge (the
edge's send span is a child of the worker span that sent the message).
A request whose forwarding waited for DNS stays the parent of what is sent
once the answer is back (``nodes.worker.resolver``).
Attributes: ``sip.request.method`` (for responses: the CSeq method),
``sip.response.status_code``, ``sip.call_id``, ``sip.cseq`` (the number),
``sip.request.uri``, ``network.transport`` (``udp``, ``tcp``),
``network.peer.address``, ``network.peer.port``, ``user_agent.original``,
``sip.shard`` (the worker that owns the call), ``sip.node`` (the node that
recorded the span).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from contextlib import contextmanager
from hashlib import blake2b
from typing import TYPE_CHECKING

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_ON, ParentBased, Sampler, TraceIdRatioBased,
)
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

from cluster.tu import TUObserver

if TYPE_CHECKING:  # pragma: no cover
    from opentelemetry.trace import Span

    from cluster.app.api import Call, Handler
    from cluster.link import Envelope
    from cluster.sip import Message

__all__ = [
    "RouteSpans", "Tracing", "format_traceparent", "parse_traceparent", "trace_id_for",
]

log = logging.getLogger("sipcluster.tracing")

_LOW_64 = (1 << 64) - 1
_ALL = 1 << 64
_TRUE = frozenset(("true", "1", "yes", "on"))
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})\Z")
# Only for sampled messages at the edge, which does not parse: the start line
# and two header fields are enough to name the span (RFC 3261 §7.1, §20.16, §20.41).
_CSEQ = re.compile(rb"^CSeq[ \t]*:[ \t]*(\d+)[ \t]+([!-~]+)", re.IGNORECASE | re.MULTILINE)
_USER_AGENT = re.compile(rb"^User-Agent[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE | re.MULTILINE)
_TRANSPORTS = {"UDP": "udp", "TCP": "tcp", "TLS": "tls", "WS": "ws", "WSS": "wss"}


def trace_id_for(call_id: bytes | str) -> int:
    """The call's trace id: the first 16 bytes of blake2b(Call-ID), never 0."""
    if isinstance(call_id, str):
        # The parser decodes with surrogateescape: this gives back the very
        # bytes the edge hashed.
        call_id = call_id.encode("utf-8", "surrogateescape")
    return int.from_bytes(blake2b(call_id, digest_size=16).digest(), "big") or 1


def format_traceparent(trace_id: int, span_id: int, sampled: bool = True) -> str:
    """W3C Trace Context ``traceparent`` (version 00)."""
    return f"00-{trace_id:032x}-{span_id:016x}-{'01' if sampled else '00'}"


def parse_traceparent(text: str | None) -> SpanContext | None:
    """The remote span context of a ``traceparent``; None if absent or invalid."""
    if not text:
        return None
    m = _TRACEPARENT.match(text)
    if m is None:
        return None
    trace_id, span_id = int(m.group(1), 16), int(m.group(2), 16)
    if not trace_id or not span_id:
        return None
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(int(m.group(3), 16) & 1))


class CallIdGenerator(RandomIdGenerator):
    """Root spans take the trace id of the call being traced.

    The node calls ``use(trace_id)`` right before it starts a root span and
    ``use(0)`` after; the loop is single-threaded, so nothing can slip in
    between.
    """

    def __init__(self) -> None:
        self.next_trace_id = 0

    def use(self, trace_id: int) -> None:
        """The next root span's trace id (0: a random one)."""
        self.next_trace_id = trace_id

    def generate_trace_id(self) -> int:
        trace_id = self.next_trace_id
        return trace_id if trace_id else super().generate_trace_id()


def _sampler(environ: Mapping[str, str]) -> tuple[Sampler | None, int]:
    """The sampler from ``OTEL_TRACES_SAMPLER`` and its bound on the low 64
    bits of the trace id; None when it can never sample."""
    name = environ.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    if name in ("always_off", "parentbased_always_off"):
        return None, 0
    if name in ("traceidratio", "parentbased_traceidratio"):
        try:
            rate = float(environ.get("OTEL_TRACES_SAMPLER_ARG", "1.0"))
        except ValueError:
            log.warning("OTEL_TRACES_SAMPLER_ARG is not a number; sampling everything")
            rate = 1.0
        rate = min(max(rate, 0.0), 1.0)
        if rate <= 0.0:
            return None, 0
        root = TraceIdRatioBased(rate)
        return ParentBased(root), root.bound
    if name not in ("always_on", "parentbased_always_on"):
        log.warning("OTEL_TRACES_SAMPLER=%s is not supported here (always_on, always_off, "
                    "traceidratio and their parentbased_ forms are); sampling everything", name)
    return ParentBased(ALWAYS_ON), _ALL


def _exporters(environ: Mapping[str, str]) -> list[str]:
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() in _TRUE:
        return []
    names = environ.get("OTEL_TRACES_EXPORTER")
    if names is None:
        configured = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        return ["otlp"] if configured else []
    return [n.strip().lower() for n in names.split(",") if n.strip() and n.strip().lower() != "none"]


def _span_exporter(name: str, environ: Mapping[str, str]):
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter
        return ConsoleSpanExporter()
    if name in ("otlp", "otlp_proto_http"):
        protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get(
            "OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf"
        if protocol != "http/protobuf":
            log.warning("OTLP protocol %s is not supported; exporting over http/protobuf", protocol)
        # Our own exporter around a hand-written encoder (~5x less CPU per span).
        from cluster.observability.otlp_http import OtlpHttpSpanExporter
        try:
            return OtlpHttpSpanExporter.from_environment(environ)
        except (ValueError, OSError) as error:
            log.warning("OTLP exporter not started: %s", error)
            return None
    log.warning("OTEL_TRACES_EXPORTER=%s is not supported (otlp, console); ignored", name)
    return None


def _transport(transport: str) -> str:
    return _TRANSPORTS.get(transport) or transport.lower()


class Tracing:
    """Span factory of one node. Build it with ``from_environment``; None means off."""

    def __init__(self, provider: TracerProvider, *, node_id: str, role: str, bound: int,
                 ids: CallIdGenerator) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("sipcluster")
        self.node_id = node_id
        self.role = role
        self.bound = bound
        self._ids = ids
        self.current: Span | None = None
        """The worker span of the message being processed (set by ``use``)."""

    @classmethod
    def from_environment(cls, role: str, node_id: str,
                         environ: Mapping[str, str] | None = None, *,
                         processors: list | None = None) -> Tracing | None:
        """The node's tracing as the ``OTEL_*`` variables ask, or None when off.

        ``processors`` replaces the exporters (tests use an in-memory one).
        """
        environ = os.environ if environ is None else environ
        names = _exporters(environ) if processors is None else ["given"]
        if not names:
            return None
        sampler, bound = _sampler(environ)
        if sampler is None:
            return None
        if processors is None:
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            processors = [BatchSpanProcessor(e) for e in map(lambda n: _span_exporter(n, environ), names)
                          if e is not None]
            if not processors:
                return None
        attributes = {"service.instance.id": node_id, "sipcluster.role": role}
        if not environ.get("OTEL_SERVICE_NAME") and "service.name=" not in environ.get(
                "OTEL_RESOURCE_ATTRIBUTES", ""):
            attributes["service.name"] = f"sipcluster-{role}"
        ids = CallIdGenerator()
        provider = TracerProvider(sampler=sampler, resource=Resource.create(attributes), id_generator=ids)
        for processor in processors:
            provider.add_span_processor(processor)
        return cls(provider, node_id=node_id, role=role, bound=bound, ids=ids)

    def shutdown(self) -> None:
        """Flush what is queued and stop the exporters (node exit)."""
        self.provider.shutdown()

    # -- decisions -------------------------------------------------------------

    def sampled(self, trace_id: int) -> bool:
        """The ratio sampler's decision for a root span of ``trace_id``."""
        return (trace_id & _LOW_64) < self.bound

    def _root(self, trace_id: int, name: str, kind: SpanKind, attributes: dict) -> Span:
        self._ids.use(trace_id)
        try:
            return self.tracer.start_span(name, context=otel_context.Context(), kind=kind,
                                          attributes=attributes)
        finally:
            self._ids.use(0)

    # -- edge --------------------------------------------------------------------

    def edge_receive(self, call_id: bytes, data: bytes, transport: str,
                     source: tuple[str, int], shard: str) -> Span | None:
        """The span of one inbound message at the edge, if its call is sampled.

        The caller puts ``traceparent(span)`` in the envelope and ends the span."""
        trace_id = trace_id_for(call_id)
        if (trace_id & _LOW_64) >= self.bound:
            return None
        what, attributes = _describe_raw(data)
        attributes["sip.call_id"] = call_id.decode("utf-8", "replace")
        attributes["network.transport"] = _transport(transport)
        attributes["network.peer.address"] = source[0]
        attributes["network.peer.port"] = source[1]
        attributes["sip.shard"] = shard
        attributes["sip.node"] = self.node_id
        return self._root(trace_id, f"edge.receive {what}", SpanKind.SERVER, attributes)

    def edge_send(self, env: Envelope) -> None:
        """A span for an outbound message the worker traced (its envelope has a traceparent)."""
        parent = parse_traceparent(env.trace)
        if parent is None or not parent.trace_flags.sampled:
            return
        what, attributes = _describe_raw(env.data)
        attributes["network.transport"] = _transport(env.transport)
        attributes["network.peer.address"] = env.peer[0]
        attributes["network.peer.port"] = env.peer[1]
        if env.sender:
            attributes["sip.shard"] = env.sender
        attributes["sip.node"] = self.node_id
        span = self.tracer.start_span(
            f"edge.send {what}", context=trace.set_span_in_context(NonRecordingSpan(parent)),
            kind=SpanKind.CLIENT, attributes=attributes)
        span.end()

    # -- worker ------------------------------------------------------------------

    def worker_receive(self, message: Message, env: Envelope) -> Span | None:
        """The worker span of one inbound message: a child of the edge's span
        when the envelope carries one, else a root span when the call is sampled."""
        parent = parse_traceparent(env.trace)
        if parent is None:
            trace_id = trace_id_for(message.call_id)
            if (trace_id & _LOW_64) >= self.bound:
                return None
        elif not parent.trace_flags.sampled:
            return None
        what, attributes = describe_message(message)
        attributes["network.transport"] = _transport(env.transport)
        attributes["network.peer.address"] = env.peer[0]
        attributes["network.peer.port"] = env.peer[1]
        attributes["sip.shard"] = self.node_id
        attributes["sip.node"] = self.node_id
        name = f"worker.transaction {what}"
        if parent is None:
            return self._root(trace_id, name, SpanKind.CONSUMER, attributes)
        return self.tracer.start_span(name, context=trace.set_span_in_context(NonRecordingSpan(parent)),
                                      kind=SpanKind.CONSUMER, attributes=attributes)

    @contextmanager
    def use(self, span: Span):
        """Make ``span`` current while the message is processed; end it after."""
        self.current = span
        try:
            with trace.use_span(span, end_on_exit=True):
                yield span
        finally:
            self.current = None

    def outbound(self, message: Message) -> str | None:
        """``traceparent`` for the envelope of an outbound message: the current
        span's (which also notes a final response's status on it).

        Outside any span (a timer fired, a registrar answer after its span) a
        sampled call gets a short ``worker.send`` span, so that the edge's
        send span still joins the call's trace."""
        span = trace.get_current_span()
        context = span.get_span_context()
        if context.is_valid:
            if not context.trace_flags.sampled:
                return None
            status = getattr(message, "status", 0)
            if status >= 200 and span.is_recording():
                span.set_attribute("sip.response.status_code", status)
            return format_traceparent(context.trace_id, context.span_id)
        try:
            call_id = message.call_id
        except Exception:  # noqa: BLE001 - a message we built without one: untraced
            return None
        trace_id = trace_id_for(call_id)
        if (trace_id & _LOW_64) >= self.bound:
            return None
        span = self._root(trace_id, "worker.send", SpanKind.INTERNAL,
                          {"sip.call_id": _text(call_id), "sip.shard": self.node_id, "sip.node": self.node_id})
        span.end()
        context = span.get_span_context()
        return format_traceparent(context.trace_id, context.span_id)

    def child(self, name: str, attributes: dict | None = None, kind: SpanKind = SpanKind.INTERNAL):
        """A context manager: a child span of the current span when the call
        is sampled; otherwise nothing is created (``None`` is yielded).

        The current span may have ended already: a registrar task outlives
        the span of the REGISTER that started it, and its spans still belong
        under that one."""
        context = trace.get_current_span().get_span_context()
        if not (context.is_valid and context.trace_flags.sampled):
            return _NO_SPAN
        attributes = dict(attributes or ())
        attributes["sip.node"] = self.node_id
        return self.tracer.start_as_current_span(name, kind=kind, attributes=attributes)


class RouteSpans(TUObserver):
    """The transaction user's observer when tracing is on: a traced call's
    handler runs in a ``sip.route <handler>`` span naming the handler and its
    decision. Untraced calls get the handler itself (no wrapper, no allocation)."""

    def __init__(self, tracing: Tracing, app_name: str) -> None:
        self._tracing = tracing
        self._app_name = app_name

    def handler(self, key: str, handler: Handler, call: Call) -> Handler:
        tracing = self._tracing
        # Handlers run while the worker processes a message: ``current``
        # says whether that message is traced, without the context API.
        if tracing.current is None:
            return handler
        attributes = {"sip.app": self._app_name,
                      "sip.app.handler": f"{getattr(handler, '__module__', '?')}."
                                         f"{getattr(handler, '__qualname__', handler)}",
                      "sip.app.handler_key": key, "sip.node": tracing.node_id}
        tracer = tracing.tracer

        def traced(call: Call):
            with tracer.start_as_current_span(f"sip.route {getattr(handler, '__name__', 'handler')}",
                                              attributes=attributes) as span:
                decision = handler(call)
                span.set_attribute("sip.route.decision", describe_decision(decision))
                return decision
        return traced


class _NoSpan:
    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: object) -> None:
        return None


_NO_SPAN = _NoSpan()


def traceparent(span: Span) -> str:
    context = span.get_span_context()
    return format_traceparent(context.trace_id, context.span_id)


def _describe_raw(data: bytes) -> tuple[str, dict]:
    """Span name suffix and SIP attributes of raw bytes (edge side, sampled only)."""
    end = data.find(b"\r\n\r\n")
    head = data if end < 0 else data[:end]
    line_end = head.find(b"\r\n")
    first = (head if line_end < 0 else head[:line_end]).decode("utf-8", "replace").split(" ", 2)
    attributes: dict = {}
    cseq = _CSEQ.search(head)
    method = cseq.group(2).decode("ascii", "replace") if cseq else "?"
    if cseq:
        attributes["sip.cseq"] = int(cseq.group(1)[:9])
    agent = _USER_AGENT.search(head)
    if agent:
        attributes["user_agent.original"] = agent.group(1).decode("utf-8", "replace")
    if first[0].startswith("SIP/") and len(first) >= 2 and first[1].isdigit():
        attributes["sip.response.status_code"] = int(first[1])
        attributes["sip.request.method"] = method
        return f"{first[1]} {method}", attributes
    if len(first) >= 2:
        method = first[0]
        attributes["sip.request.method"] = method
        attributes["sip.request.uri"] = first[1]
    return method, attributes


def _text(value: str) -> str:
    """An attribute value that encodes as UTF-8: the parser keeps undecodable
    bytes as lone surrogates (surrogateescape), which OTLP cannot carry."""
    if value.isascii():
        return value
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def describe_decision(decision: object) -> str:
    """``reply 200``, ``proxy 2 parallel``, ``challenge``, ``register`` or ``none``."""
    if decision is None:
        return "none"
    kind = type(decision).__name__.lower()
    if hasattr(decision, "status"):
        return f"{kind} {decision.status}"
    targets = getattr(decision, "targets", None)
    if targets is not None:
        return f"{kind} {len(targets)} {'parallel' if getattr(decision, 'parallel', True) else 'serial'}"
    return kind


def describe_message(message: Message) -> tuple[str, dict]:
    """Span name suffix and SIP attributes of a parsed message (worker side)."""
    attributes: dict = {"sip.call_id": _text(message.call_id)}
    try:
        cseq = message.cseq
        attributes["sip.cseq"] = cseq.seq
        attributes["sip.request.method"] = method = cseq.method
        agent = message.user_agent
        if agent:
            attributes["user_agent.original"] = agent
    except Exception:  # noqa: BLE001 - a lazily parsed field is broken: the span says less
        method = "?"
    status = getattr(message, "status", None)
    if status is not None:
        attributes["sip.response.status_code"] = status
        return f"{status} {method}", attributes
    # No status: a Request.
    attributes["sip.request.method"] = message.method  # type: ignore[attr-defined]
    attributes["sip.request.uri"] = str(message.uri)  # type: ignore[attr-defined]
    return message.method, attributes  # type: ignore[attr-defined]

