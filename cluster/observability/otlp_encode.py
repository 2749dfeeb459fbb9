"""OTLP/protobuf encoding of finished spans, written straight to wire bytes.

The SDK's encoder builds one protobuf object per span, attribute and value,
then serializes the tree: about 56 µs for one of our spans (~10 attributes),
which made even 1 % sampling cost real CPU. This module writes the same
``ExportTraceServiceRequest`` bytes directly (varints, length-delimited
fields, fixed64 times) and caches what repeats from batch to batch: the
encoded resource and scope headers and the encoded attribute keys.

The output is meant to be byte for byte what
``opentelemetry.exporter.otlp.proto.common.trace_encoder.encode_spans(spans)
.SerializePartialToString()`` gives, including its choices:

- spans are grouped by resource, then by instrumentation scope, each group in
  the order of its first span (resources and scopes compare as the SDK's dict
  keys do);
- ``Span.flags`` carries only the "has is_remote" bit and, for a remote
  parent, the "is remote" bit (not the W3C trace flags); links likewise;
- a link's ``trace_state`` is not sent (the SDK encoder leaves it out);
- the status is always present; an attribute whose value cannot be encoded
  (an int beyond int64, a string with lone surrogates) is logged and left out.

``otlp_http.OtlpHttpSpanExporter`` posts these bytes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from operator import attrgetter
from struct import Struct

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace import Span as SDKSpan
from opentelemetry.trace import SpanKind

__all__ = ["encode_spans"]

log = logging.getLogger("sipcluster.otlp")

# Wire types (protobuf encoding): 0 varint, 1 fixed64, 2 length-delimited, 5 fixed32.
# Tags are (field number << 3) | wire type, as one byte below field 16.
_VARINTS = [bytes((i,)) for i in range(128)]
_ID_PAIR = Struct(">HQQHQ")     # trace_id (16 bytes) and span_id (8), big endian
_PARENT = Struct(">HQ")         # parent_span_id
_TIMES = Struct("<BQBQ")        # start and end time, fixed64 little endian
_FIXED64 = Struct("<BQ")
_DOUBLE = Struct("<Bd")
_PARENT_TAG = 0x2208            # Span.parent_span_id (4), len 8
_INT64_MIN = -(1 << 63)
_INT64_END = 1 << 63
_UINT64 = 1 << 64

# Span.flags (16, fixed32): SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK (0x100),
# plus SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK (0x200) when the parent is remote.
_SPAN_FLAGS = (b"\x85\x01\x00\x01\x00\x00", b"\x85\x01\x00\x03\x00\x00")
# Span.Link.flags (6, fixed32), same bits.
_LINK_FLAGS = (b"\x35\x00\x01\x00\x00", b"\x35\x00\x03\x00\x00")
_KINDS = {
    SpanKind.INTERNAL: b"\x30\x01", SpanKind.SERVER: b"\x30\x02", SpanKind.CLIENT: b"\x30\x03",
    SpanKind.PRODUCER: b"\x30\x04", SpanKind.CONSUMER: b"\x30\x05",
}
# Enum members hash in Python; their identities hash in C.
_KIND_BY_IDENTITY = {id(kind): field for kind, field in _KINDS.items()}
# AnyValue bodies that do not vary: bool_value (2), small int_value (3).
_TRUE = b"\x10\x01"
_FALSE = b"\x10\x00"
_SMALL_INTS = [b"\x18" + bytes((i,)) for i in range(128)]
# KeyValue.value (2) holding AnyValue.string_value (1) of a short string: both
# lengths fit one byte, so the two headers come from one table.
_SHORT_STRING = [bytes((0x12, n + 2, 0x0A, n)) for n in range(126)]
_SHORT_INT = [bytes((0x12, 2, 0x18, n)) for n in range(128)]
# A repeated KeyValue field's tag and a one-byte length, by containing field:
# Resource.attributes (1), InstrumentationScope/Event.attributes (3),
# Link.attributes (4), Span.attributes (9).
_RESOURCE_ATTRIBUTE, _EVENT_ATTRIBUTE, _LINK_ATTRIBUTE, _SPAN_ATTRIBUTE = (
    [bytes((tag, n)) for n in range(128)] for tag in (0x0A, 0x1A, 0x22, 0x4A))
_EMPTY_STATUS = (b"\x7a\x00", b"\x7a\x02\x18\x01", b"\x7a\x02\x18\x02")

_MISSING = object()
_KEY_CACHE_SIZE = 2048
_HEADER_CACHE_SIZE = 64
_keys: dict[str, bytes] = {}
"""Attribute key → encoded ``KeyValue.key`` field (keys are a small set)."""
_resources: dict[int, tuple[object, bytes, bytes]] = {}
"""id(Resource) → (the resource, ResourceSpans head, ResourceSpans tail)."""
_scopes: dict[int, tuple[object, bytes, bytes]] = {}
"""id(InstrumentationScope) → (the scope, ScopeSpans head, ScopeSpans tail)."""


def _varint(n: int) -> bytes:
    if n < 128:
        return _VARINTS[n]
    if n < 16384:
        return bytes((n & 0x7F | 0x80, n >> 7))
    out = bytearray()
    while n > 127:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _int64(n: int) -> bytes:
    """An ``int64`` varint: negative numbers take ten bytes (two's complement)."""
    if n < 0:
        if n < _INT64_MIN:
            raise ValueError(f"Value out of range: {n}")
        return _varint(n + _UINT64)
    if n >= _INT64_END:
        raise ValueError(f"Value out of range: {n}")
    return _varint(n)


def _string_field(tag: bytes, text: str) -> bytes:
    """A string field; proto3 leaves an empty one out."""
    if not text:
        return b""
    raw = text.encode()
    return tag + _varint(len(raw)) + raw


def _key_field(key: str) -> bytes:
    field = _keys.get(key)
    if field is None:
        field = _string_field(b"\x0a", key)
        if len(_keys) < _KEY_CACHE_SIZE:
            _keys[key] = field
    return field


# -- values ------------------------------------------------------------------------


def _any_value(value: object) -> bytes:
    """The body of an ``AnyValue``: the exact types first, then the SDK's
    ``isinstance`` order for subclasses and the rare types."""
    # The ignores below: ``kind is str`` (one type() call for the chain)
    # tells what value is, which the checker cannot follow.
    kind = type(value)
    if kind is str:
        raw = value.encode()  # type: ignore[attr-defined]
        return b"\x0a" + _varint(len(raw)) + raw
    if kind is int:
        if 0 <= value < 128:  # type: ignore[operator]
            return _SMALL_INTS[value]  # type: ignore[call-overload]
        return b"\x18" + _int64(value)  # type: ignore[arg-type]
    if kind is bool:
        return _TRUE if value else _FALSE
    if kind is float:
        return _DOUBLE.pack(0x21, value)
    if kind is tuple or kind is list:
        return _array_value(value)  # type: ignore[arg-type]
    return _any_value_other(value)


def _any_value_other(value: object) -> bytes:
    if value is None:
        return b""
    if isinstance(value, bool):
        return _TRUE if value else _FALSE
    if isinstance(value, str):
        raw = value.encode()
        return b"\x0a" + _varint(len(raw)) + raw
    if isinstance(value, int):
        return b"\x18" + _int64(int(value))
    if isinstance(value, float):
        return _DOUBLE.pack(0x21, value)
    if isinstance(value, bytes):
        # bytes_value (7) has presence: even b"" is sent.
        return b"\x3a" + _varint(len(value)) + bytes(value)
    if isinstance(value, Sequence):
        return _array_value(value)
    if isinstance(value, Mapping):
        body = b"".join(_wrap(b"\x0a", _key_value(str(k), v)) for k, v in value.items())
        return b"\x32" + _varint(len(body)) + body
    raise TypeError(f"Invalid type {type(value)} of value {value}")


def _array_value(values: Sequence) -> bytes:
    # AnyValue.array_value (5) → ArrayValue.values (1), one AnyValue each.
    parts = []
    for item in values:
        encoded = _any_value(item)
        parts.append(b"\x0a")
        parts.append(_varint(len(encoded)))
        parts.append(encoded)
    body = b"".join(parts)
    return b"\x2a" + _varint(len(body)) + body


def _key_value(key: str, value: object) -> bytes:
    # KeyValue.value (2) has presence: an empty AnyValue is still sent.
    encoded = _any_value(value)
    return _key_field(key) + b"\x12" + _varint(len(encoded)) + encoded


def _wrap(tag: bytes, body: bytes) -> bytes:
    return tag + _varint(len(body)) + body


def _items(attributes):
    """The pairs of an attribute mapping. The SDK's ``BoundedAttributes`` goes
    through the generic ``Mapping`` machinery (a Python call per key); its
    inner dict does not."""
    if type(attributes) is BoundedAttributes:
        inner = getattr(attributes, "_dict", None)
        if type(inner) is dict:
            return inner.items()
    return attributes.items()


def _attributes(heads: list, attributes, parts: list) -> None:
    """Append one ``KeyValue`` field per attribute to ``parts`` (``heads[n]``
    is the field's tag and a length ``n`` < 128); an attribute that cannot
    be encoded is logged and skipped, as the SDK does."""
    keys = _keys
    for key, value in _items(attributes):
        try:
            head = keys.get(key)
            if head is None:
                head = _key_field(key)
            kind = type(value)
            if kind is str:
                raw = value.encode()
                size = len(raw)
                total = len(head) + size + 4
                if total < 128:
                    parts += (heads[total], head, _SHORT_STRING[size], raw)
                    continue
                encoded = b"\x0a" + _varint(size) + raw
            elif kind is int and 0 <= value < 16384:
                if value < 128:
                    total = len(head) + 4
                    if total < 128:
                        parts += (heads[total], head, _SHORT_INT[value])
                        continue
                    encoded = _SMALL_INTS[value]
                else:
                    encoded = bytes((0x18, value & 0x7F | 0x80, value >> 7))
            else:
                encoded = _any_value(value)
            body = head + b"\x12" + _varint(len(encoded)) + encoded
        except Exception as error:
            log.exception("Failed to encode key %s: %s", key, error)
            continue
        size = len(body)
        parts += (heads[size] if size < 128 else heads[0][:1] + _varint(size), body)


# -- resource and scope ----------------------------------------------------------------


def _memoised(cache: dict, owner, encode) -> tuple[bytes, bytes]:
    """``encode(owner)`` once per live object: resources and scopes are the
    same few objects for the life of a node."""
    cached = cache.get(id(owner))
    if cached is not None and cached[0] is owner:
        return cached[1], cached[2]
    head, tail = encode(owner)
    if len(cache) >= _HEADER_CACHE_SIZE:
        cache.clear()
    cache[id(owner)] = (owner, head, tail)
    return head, tail


def _encode_resource(resource) -> tuple[bytes, bytes]:
    parts: list = []
    if resource.attributes:
        _attributes(_RESOURCE_ATTRIBUTE, resource.attributes, parts)
    body = b"".join(parts)
    return b"\x0a" + _varint(len(body)) + body, _string_field(b"\x1a", resource.schema_url)


def _encode_scope(scope) -> tuple[bytes, bytes]:
    parts = [_string_field(b"\x0a", scope.name), _string_field(b"\x12", scope.version)]
    if scope.attributes:
        _attributes(_EVENT_ATTRIBUTE, scope.attributes, parts)
    body = b"".join(parts)
    return b"\x0a" + _varint(len(body)) + body, _string_field(b"\x1a", scope.schema_url)


def _resource_parts(resource) -> tuple[bytes, bytes]:
    """``ResourceSpans.resource`` (1) and ``schema_url`` (3), encoded once per resource."""
    return _memoised(_resources, resource, _encode_resource)


def _scope_parts(scope) -> tuple[bytes, bytes]:
    """``ScopeSpans.scope`` (1) and ``schema_url`` (3), encoded once per scope."""
    if scope is None:
        return b"\x0a\x00", b""
    return _memoised(_scopes, scope, _encode_scope)


# -- spans --------------------------------------------------------------------------


def _sdk_span_types() -> frozenset:
    """The span classes whose fields ``encode_spans`` reads directly.

    The public properties of ``ReadableSpan`` are Python calls and some copy
    (a MappingProxy of the attributes, a tuple of the events): ten of them
    per span cost more than encoding a short attribute. The SDK's classes
    qualify while their fields carry the properties' names and ``Span``
    does not override the properties; any other class (or an SDK that
    changed) is read through the properties. A private use of the SDK,
    listed and checked in ``cluster/internals.py``."""
    try:
        probe = ReadableSpan("probe")
    except Exception:  # noqa: BLE001 - another SDK: the properties only
        return frozenset()
    if not all(hasattr(probe, "_" + name) for name in _SPAN_FIELDS):
        return frozenset()
    names = _SPAN_FIELDS + ("dropped_attributes", "dropped_events", "dropped_links")
    if all(getattr(SDKSpan, name) is getattr(ReadableSpan, name) for name in names):
        return frozenset((ReadableSpan, SDKSpan))
    return frozenset((ReadableSpan,))


_SPAN_FIELDS = ("context", "parent", "name", "kind", "start_time", "end_time",
                "attributes", "events", "links", "status")
_public_fields = attrgetter(*_SPAN_FIELDS)
_private_fields = attrgetter(*("_" + name for name in _SPAN_FIELDS))
_SDK_SPANS = _sdk_span_types()


def _encode_span(span: ReadableSpan) -> bytes:
    """One ``ScopeSpans.spans`` (2) field: a ``Span`` with its tag and length."""
    if type(span) in _SDK_SPANS:
        context, parent, name, kind, start, end, attributes, events, links, status = _private_fields(span)
        # What the dropped_* properties return: the bounded containers' count, else 0.
        dropped_attributes = getattr(attributes, "dropped", 0)
        dropped_events = getattr(events, "dropped", 0)
        dropped_links = getattr(links, "dropped", 0)
    else:
        context, parent, name, kind, start, end, attributes, events, links, status = _public_fields(span)
        dropped_attributes = span.dropped_attributes
        dropped_events = span.dropped_events
        dropped_links = span.dropped_links
    trace_id = context.trace_id
    parts = [_ID_PAIR.pack(0x0A10, trace_id >> 64, trace_id & 0xFFFFFFFFFFFFFFFF, 0x1208, context.span_id)]
    trace_state = context.trace_state
    if trace_state:
        parts.append(_string_field(b"\x1a", ",".join([f"{k}={v}" for k, v in trace_state.items()])))
    if parent:
        parts.append(_PARENT.pack(_PARENT_TAG, parent.span_id))
        flags = _SPAN_FLAGS[1 if parent.is_remote else 0]
    else:
        flags = _SPAN_FLAGS[0]
    if name:
        parts.append(_string_field(b"\x2a", name))
    field = _KIND_BY_IDENTITY.get(id(kind))
    parts.append(_KINDS[kind] if field is None else field)
    if start and end:
        parts.append(_TIMES.pack(0x39, start, 0x41, end))
    else:
        if start:
            parts.append(_FIXED64.pack(0x39, start))
        if end:
            parts.append(_FIXED64.pack(0x41, end))
    if attributes:
        _attributes(_SPAN_ATTRIBUTE, attributes, parts)
    if dropped_attributes:
        parts.append(b"\x50" + _varint(dropped_attributes))
    if events:
        for event in events:
            parts.append(_wrap(b"\x5a", _encode_event(event)))
    if dropped_events:
        parts.append(b"\x60" + _varint(dropped_events))
    if links:
        for link in links:
            parts.append(_wrap(b"\x6a", _encode_link(link)))
    if dropped_links:
        parts.append(b"\x70" + _varint(dropped_links))
    code = status.status_code.value
    description = status.description
    if description:
        body = _string_field(b"\x12", description) + (b"\x18" + _VARINTS[code] if code else b"")
        parts.append(b"\x7a" + _varint(len(body)) + body)
    else:
        parts.append(_EMPTY_STATUS[code])
    parts.append(flags)
    body = b"".join(parts)
    return b"\x12" + _varint(len(body)) + body


def _encode_event(event) -> bytes:
    parts: list = []
    timestamp = event.timestamp
    if timestamp:
        parts.append(_FIXED64.pack(0x09, timestamp))
    parts.append(_string_field(b"\x12", event.name))
    attributes = event.attributes
    if attributes:
        _attributes(_EVENT_ATTRIBUTE, attributes, parts)
    dropped = event.dropped_attributes
    if dropped:
        parts.append(b"\x20" + _varint(dropped))
    return b"".join(parts)


def _encode_link(link) -> bytes:
    context = link.context
    trace_id = context.trace_id
    parts = [_ID_PAIR.pack(0x0A10, trace_id >> 64, trace_id & 0xFFFFFFFFFFFFFFFF, 0x1208, context.span_id)]
    attributes = link.attributes
    if attributes:
        _attributes(_LINK_ATTRIBUTE, attributes, parts)
    dropped = link.dropped_attributes
    if dropped:
        parts.append(b"\x28" + _varint(dropped))
    parts.append(_LINK_FLAGS[1 if context.is_remote else 0])
    return b"".join(parts)


def _group(groups: list, key) -> list:
    """The group of ``key`` in ``groups`` (pairs of key and list), added if new.

    The SDK groups with dicts keyed by resource and by scope, so a key joins
    a group when a dict would find it: same object, or equal hash and equal
    value. Hashing is what makes that slow per span (``Resource.__hash__``
    serializes its attributes to JSON, a scope's is a Python call), and the
    spans of one provider share their resource and scope objects: callers
    try identity first and come here only for an object not seen yet."""
    for known, members in groups:
        if known is key or (hash(known) == hash(key) and known == key):
            return members
    added: list = []
    groups.append((key, added))
    return added


def encode_spans(spans: Sequence[ReadableSpan]) -> bytes:
    """The serialized ``ExportTraceServiceRequest`` of ``spans``."""
    groups: list = []  # (resource, [(scope, [encoded span, ...]), ...])
    by_identity: dict[int, list] = {}
    last_resource = last_scope = _MISSING
    scopes: list = []
    bucket: list = []
    for span in spans:
        resource = span.resource
        if resource is not last_resource:
            scopes = by_identity.get(id(resource))  # type: ignore[assignment]  # None checked next
            if scopes is None:
                scopes = by_identity[id(resource)] = _group(groups, resource)
            last_resource = resource
            last_scope = _MISSING
        scope = span.instrumentation_scope or None
        if scope is not last_scope:
            bucket = _group(scopes, scope)
            last_scope = scope
        bucket.append(_encode_span(span))

    # One join at the end: lengths of the nested messages are sums of their parts.
    out: list = []
    for resource, scopes in groups:
        head, tail = _resource_parts(resource)
        resource_at = len(out)
        out.append(b"")
        out.append(head)
        size = len(head) + len(tail)
        for scope, encoded in scopes:
            scope_head, scope_tail = _scope_parts(scope)
            scope_size = len(scope_head) + len(scope_tail) + sum(map(len, encoded))
            length = _varint(scope_size)
            out.append(b"\x12" + length)
            out.append(scope_head)
            out.extend(encoded)
            out.append(scope_tail)
            size += 1 + len(length) + scope_size
        out.append(tail)
        out[resource_at] = b"\x0a" + _varint(size)
    return b"".join(out)
