"""Every use this project makes of a dependency's private or undocumented parts.

Each is worth it (speed, or a behaviour the public API does not offer), sits
in one module, and has a check here that ``tests/test_internals.py`` runs:
when a dependency changes what we rely on, that test fails and names the
entry, instead of the node misbehaving in production. Anything not listed
here uses the dependencies' public APIs only (STYLE §7).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["INTERNALS", "Internal"]


@dataclass(frozen=True, slots=True)
class Internal:
    dependency: str
    what: str
    where: str
    why: str
    fallback: str
    check: Callable[[], None]
    """Raises AssertionError when the installed dependency no longer has it."""


def _sdk_span_fields() -> None:
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace import Span as SDKSpan

    from cluster.observability import otlp_encode

    assert otlp_encode._sdk_span_types() == {ReadableSpan, SDKSpan}, \
        "the SDK's span classes no longer keep the properties' values in _<name> fields"
    span = TracerProvider().get_tracer("probe").start_span("probe", attributes={"a": 1})
    span.add_event("e")
    span.end()
    private = otlp_encode._private_fields(span)
    public = otlp_encode._public_fields(span)
    same = [dict(p) == dict(q) if i == 6 else (tuple(p) == tuple(q) if i in (7, 8) else p == q)
            for i, (p, q) in enumerate(zip(private, public))]
    assert all(same), f"ReadableSpan's private fields differ from its properties: {same}"


def _etcd3_failover_hook() -> None:
    import etcd3

    hook = getattr(etcd3.MultiEndpointEtcd3Client, "_manage_grpc_errors", None)
    assert callable(hook), "etcd3.MultiEndpointEtcd3Client._manage_grpc_errors is gone"
    assert list(inspect.signature(hook).parameters) == ["self", "exc"], \
        f"_manage_grpc_errors now takes {inspect.signature(hook)}"


def _etcd3_client_parts() -> None:
    import etcd3

    client = etcd3.MultiEndpointEtcd3Client(
        endpoints=[etcd3.Endpoint("127.0.0.1", 9, secure=False)], timeout=1, failover=True)
    try:
        missing = [name for name in ("kvstub", "leasestub", "channel", "call_credentials", "metadata", "timeout")
                   if not hasattr(client, name)]
        assert not missing, f"etcd3 clients no longer have {missing}"
        assert hasattr(client.kvstub, "Txn") and hasattr(client.kvstub, "Range")
        assert hasattr(client.leasestub, "LeaseGrant")
    finally:
        client.close()


INTERNALS: tuple[Internal, ...] = (
    Internal(
        "opentelemetry-sdk", "ReadableSpan._context, _parent, _name, _kind, _start_time, _end_time, "
        "_attributes, _events, _links, _status (read directly, not through the properties)",
        "cluster/observability/otlp_encode.py (_sdk_span_types, _private_fields)",
        "ten property calls per span, some copying, cost more than encoding a short attribute",
        "any other span class, or an SDK whose fields changed, is read through the public properties",
        _sdk_span_fields),
    Internal(
        "python3-etcd3", "MultiEndpointEtcd3Client._manage_grpc_errors(exc)",
        "cluster/registrar/etcd_kv.py (EtcdKV._marked)",
        "marks the endpoint that failed so the next call fails over, as the client's own calls do",
        "none: without it a failed endpoint would keep being used until etcd3's own retry timer",
        _etcd3_failover_hook),
    Internal(
        "python3-etcd3", "client.kvstub, .leasestub, .channel, .call_credentials, .metadata, .timeout",
        "cluster/registrar/etcd_kv.py (nested Txn, Range, LeaseGrant, Watch), "
        "cluster/coordination/etcd.py (EtcdStore._start_watch)",
        "group commits need nested transactions and the response header's revision, which the "
        "public Etcd3Client.transaction does not return; watches need a stream kept open",
        "none",
        _etcd3_client_parts),
)
