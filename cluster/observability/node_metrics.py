"""The metrics every node exports, and what the nodes' own metrics share.

Everything here runs at scrape time: callbacks read the plain counters the
hot paths keep (``stats`` Counters, histogram series) and the node's current
state. Each node's own families are declared next to it
(``nodes/edge/metrics.py``, ``nodes/worker/metrics.py``); ``names()`` of a
node's endpoint lists every family it exports, which ``tests/observability``
checks against a real scrape and the ``ops/`` dashboards and alerts.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

from .etcd import EtcdMetrics
from .metrics import LATENCY_BOUNDS, HistogramFamily, MetricsEndpoint, one

if TYPE_CHECKING:  # pragma: no cover
    from collections import Counter

    from cluster.defence.admission import Admission
    from cluster.sharding.membership import MembershipView

__all__ = ["KNOWN_METHODS", "ObservedNode", "admission_metrics", "drops", "hop_latency", "node_metrics"]

#: Methods counted by name; anything else is "other" (an attacker's invented
#: methods must not create time series).
KNOWN_METHODS = frozenset((
    "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK", "SUBSCRIBE", "NOTIFY",
    "PUBLISH", "INFO", "REFER", "MESSAGE", "UPDATE",
))


class ObservedNode(Protocol):
    """What the common metrics read from a node."""

    node_id: str
    stats: Counter[str]
    collector: Any
    """``nodes.collector.Collector`` when the node runs one, else None."""
    etcd_metrics: EtcdMetrics
    link_guard: Any
    """``cluster.link.LinkGuard``: its ``failures`` by reason."""

    @property
    def view(self) -> MembershipView | None: ...

    def readiness(self) -> tuple[bool, str]: ...


def hop_latency() -> HistogramFamily:
    """The per-hop latency family; each node observes its own hops."""
    return HistogramFamily(
        "sipcluster_hop_latency_seconds",
        "Per-hop latency: edge_to_worker (link, worker-observed), worker (processing of one message), "
        "edge_worker_edge (edge receive to the edge writing the answer or forwarded copy, one clock).",
        LATENCY_BOUNDS)


def _events(stats) -> Iterable[tuple[float, dict]]:
    return [(value, {"event": key}) for key, value in list(stats.items())]


def drops(stats, extra: Iterable[tuple[str, int]] = ()) -> list[tuple[float, dict]]:
    """``sipcluster_drops_total`` readings: the ``drop_*`` events, plus ``extra``."""
    out = [(value, {"reason": key[5:]}) for key, value in list(stats.items()) if key.startswith("drop_")]
    out.extend((value, {"reason": reason}) for reason, value in extra if value)
    return out


def admission_metrics(endpoint: MetricsEndpoint, admission: Admission) -> None:
    """Overload control (``cluster.defence.admission``): the level and what it shed."""
    endpoint.gauge("sipcluster_admission_level",
                   "Overload control level: 0 admits everything; 1 sheds OPTIONS and garbage, 2 also REGISTER "
                   "and other new requests, 3 also new INVITEs (answered 503).",
                   lambda: one(admission.level))
    endpoint.counter("sipcluster_shed_total", "Inbound messages shed by overload control, by class.",
                     lambda: [(v, {"class": k}) for k, v in list(admission.shed.items())])


def node_metrics(role: str, node: ObservedNode) -> MetricsEndpoint:
    """An endpoint with the metrics every node has: readiness, ring, raw
    events, the garbage collector, etcd."""
    endpoint = MetricsEndpoint(role=role, node_id=node.node_id)
    endpoint.gauge("sipcluster_node_ready",
                   "1 when the node is ready (member of the ring, etcd reachable), else 0.",
                   lambda: one(1.0 if node.readiness()[0] else 0.0))

    def ring_epoch():
        view = node.view
        return one(view.revision) if view is not None else []
    endpoint.gauge("sipcluster_ring_epoch", "Ring epoch (etcd revision of the membership view) this node routes with.",
                   ring_epoch)

    def members():
        view = node.view
        if view is None:
            return []
        return [(len(view.workers()), {"role": "worker"}), (len(view.edges()), {"role": "edge"})]
    endpoint.gauge("sipcluster_ring_members", "Members in this node's membership view, by role.", members)
    endpoint.counter("sipcluster_link_auth_failures_total",
                     "Connections to this node's link refused: unknown_key (a CURVE key no member "
                     "publishes), wrong_role (a member that never sends here), handshake (no CURVE: "
                     "plaintext or garbage).",
                     lambda: [(value, {"reason": reason})
                              for reason, value in list(node.link_guard.failures.items())])
    endpoint.counter("sipcluster_node_events_total",
                     "Every event the node counts (its /status 'stats'), by event name.",
                     lambda: _events(node.stats))
    _collector(endpoint, node.collector)
    node.etcd_metrics.export(endpoint)
    return endpoint


def _collector(endpoint: MetricsEndpoint, collector) -> None:
    """The garbage collector policy of nodes/collector.py, when the node runs one."""
    def collections():
        s = None if collector is None else collector.stats
        return [] if s is None else [(s.collections, {"kind": "automatic"}), (s.sweeps, {"kind": "sweep"})]

    def pauses():
        s = None if collector is None else collector.stats
        return [] if s is None else [(s.pause_total_s, {"kind": "automatic"}),
                                     (s.sweep_pause_total_s, {"kind": "sweep"})]
    endpoint.counter("sipcluster_gc_collections_total",
                     "Cyclic garbage collections: automatic (young objects only) and full sweeps.", collections)
    endpoint.counter("sipcluster_gc_pause_seconds_total",
                     "Time the node stood still in the garbage collector, by kind.", pauses)
