"""The worker's metrics and ``/status``: SIP traffic, transactions, calls, dialogs, registrations, queues.

Read at scrape time from the plain counters the worker's hot paths keep
(``SipCounts``, ``stats``, the transaction layer's ``TransactionCounts``
observer and its own counters) and its current state; the common families
come from ``cluster.observability.node_metrics``.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from typing import TYPE_CHECKING

import trio

from cluster.observability.metrics import MetricsEndpoint, one
from cluster.observability.node_metrics import KNOWN_METHODS, admission_metrics, drops, node_metrics
from cluster.sharding.membership import WORKER
from cluster.sip import Message, Request

if TYPE_CHECKING:  # pragma: no cover
    from .node import WorkerNode

__all__ = ["SipCounts", "worker_metrics", "worker_status"]


def worker_metrics(node: WorkerNode) -> MetricsEndpoint:
    """The worker's ``/metrics``: the common families and the worker's own."""
    endpoint = node_metrics("worker", node)
    layer = node.transactions
    counted = node.transaction_counts
    stats = node.stats
    counts = node.sip_counts

    def fenced():
        # By the wall clock of the last confirmation: readable from any thread.
        membership = node.standing.membership
        if membership is None or membership.last_heartbeat is None:
            return []
        return one(1.0 if time.time() - membership.last_heartbeat > membership.ttl else 0.0)
    endpoint.gauge("sipcluster_worker_fenced",
                   "1 while etcd has not confirmed this worker's lease for a lease TTL: it may be gone, so the "
                   "worker takes no new request from edges that follow etcd (split brain, DESIGN §4).", fenced)

    def by_method(counter, direction):
        return [(v, {"direction": direction, "method": m}) for m, v in list(counter.items())]
    endpoint.counter("sipcluster_sip_requests_total", "SIP requests on the wire by direction (in, out) and method.",
                     lambda: by_method(counts.requests_in, "in") + by_method(counts.requests_out, "out"))

    def by_code(counter, direction):
        return [(v, {"direction": direction, "class": f"{code // 100}xx", "code": str(code)})
                for code, v in list(counter.items())]
    endpoint.counter("sipcluster_sip_responses_total",
                     "SIP responses on the wire by direction (in, out), class and code (retransmissions included).",
                     lambda: by_code(counts.responses_in, "in") + by_code(counts.responses_out, "out"))
    endpoint.counter("sipcluster_transactions_started_total", "Transactions created, by type.",
                     lambda: [(v, {"type": t}) for t, v in list(counted.started.items())])
    endpoint.counter("sipcluster_transactions_total",
                     "Transactions by type and outcome (final response class, timeout, transport_error).",
                     lambda: [(v, {"type": t, "outcome": o}) for (t, o), v in list(counted.outcomes.items())])
    endpoint.counter("sipcluster_transaction_timeouts_total", "Transaction timers that gave up, by timer (B, F, H, C).",
                     lambda: [(v, {"timer": t}) for t, v in list(counted.timeouts.items())])
    endpoint.gauge("sipcluster_transactions_active", "Live client and server transactions.",
                   lambda: one(len(layer)))
    endpoint.counter("sipcluster_retransmissions_total",
                     "Retransmissions: sent by our transactions, and received (absorbed) from peers.",
                     lambda: [(layer.counters.retransmissions_sent, {"direction": "sent"}),
                              (layer.counters.retransmissions_absorbed, {"direction": "received"})])
    endpoint.counter("sipcluster_calls_started_total", "Initial INVITEs received (new calls).",
                     lambda: one(counted.calls_started))
    endpoint.counter("sipcluster_calls_answered_total", "Calls answered with a 2xx.",
                     lambda: one(counted.calls_answered))
    endpoint.counter("sipcluster_calls_failed_total", "Calls ended by a final response >= 300, by code (487: cancelled).",
                     lambda: [(v, {"code": str(c)}) for c, v in list(counted.calls_failed.items())])
    endpoint.gauge("sipcluster_dialogs_active",
                   "Dialogs confirmed through this shard and not yet ended by BYE (estimate; see docs).",
                   lambda: one(counted.active_dialogs(trio.current_time())))
    endpoint.gauge("sipcluster_proxy_contexts", "Proxied requests waiting for their final response.",
                   lambda: one(len(node.tu.contexts) if node.tu is not None else 0))

    def registrations():
        locations = node.stores.cache if node.stores is not None else None
        if locations is None:
            return []
        return [(len(locations), {"kind": "bindings"}), (len(locations.aors()), {"kind": "aors"})]
    endpoint.gauge("sipcluster_registrations",
                   "Registrations in the cluster as this worker's location cache holds them: bindings and AORs "
                   "(an expired binding stays until etcd's lease bucket removes it, within about 35 s).",
                   registrations)
    endpoint.counter("sipcluster_registrar_requests_total", "REGISTER requests processed by the registrar, by status.",
                     lambda: [(v, {"status": k[9:]}) for k, v in list(stats.items()) if k.startswith("register_")])

    def staleness():
        locations = node.stores.cache if node.stores is not None else None
        return one(locations.stale_for(trio.current_time())) if locations is not None else []
    endpoint.gauge("sipcluster_location_cache_staleness_seconds",
                   "Seconds since the location cache's watch last delivered (0 while healthy).", staleness)

    def ownership():
        share = node.standing.ring_share()
        return one(share) if share is not None else []
    endpoint.gauge("sipcluster_shard_ownership_ratio", "Share of the Call-ID hash space this shard owns (0..1).",
                   ownership)
    endpoint.gauge("sipcluster_worker_draining", "1 while the worker drains (left the ring, finishing transactions).",
                   lambda: one(1.0 if node.standing.draining else 0.0))
    endpoint.counter("sipcluster_transaction_events_total",
                     "Transaction layer events: stray responses and ACKs, merged requests, malformed and illegal inputs.",
                     lambda: [(getattr(layer.counters, name), {"event": name}) for name in (
                         "stray_responses", "stray_acks", "unmatched_tu_responses", "merged_requests",
                         "malformed", "illegal_inputs", "transport_errors")])
    endpoint.counter("sipcluster_drops_total", "Messages dropped without an answer, by reason.",
                     lambda: drops(stats, [("malformed", stats["parse_error"] - stats["answered_malformed"])]))

    endpoint.counter("sipcluster_dns_events_total",
                     "RFC 3263 location: lookups by outcome, cache hits and misses, failovers, destinations "
                     "blocked, records truncated, late answers (ops/guide/dns.md).",
                     lambda: [(v, {"event": k[4:]}) for k, v in list(stats.items()) if k.startswith("dns_")])
    endpoint.counter("sipcluster_unroutable_total",
                     "Branches answered here because their next hop has no destination, by status "
                     "(480 no SIP server or all blocked, 504 DNS failure, 416 not a SIP URI).",
                     lambda: [(v, {"code": k[11:]}) for k, v in list(stats.items()) if k.startswith("unroutable_")])
    endpoint.gauge("sipcluster_dns_cache_entries", "Answers in the worker's DNS cache.",
                   lambda: one(len(node.dns.resolver.cache)))
    endpoint.gauge("sipcluster_dns_blocked_destinations", "Destinations blocked after not answering.",
                   lambda: one(len(node.tu.blocklist) if node.tu is not None else 0))

    def queues():
        out = [(node.reader.batch, {"queue": "link_batch"})]
        if node.stores is not None:
            reads, writes = node.stores.registrar.queued()
            out += [(reads, {"queue": "registrar_reads"}), (writes, {"queue": "registrar_writes"})]
        return out
    endpoint.gauge("sipcluster_queue_depth",
                   "Items waiting in the node's queues (link_batch: envelopes drained in the last wakeup).", queues)
    admission_metrics(endpoint, node.admission.admission)
    endpoint.counter("sipcluster_worker_overload_rejected_total",
                     "New requests a saturated worker answered 503 with Retry-After instead of queueing.",
                     lambda: one(stats["shed_rejected"]))
    endpoint.histogram(node.hops)
    return endpoint


def worker_status(node: WorkerNode) -> dict:
    """The worker's ``/status``."""
    ready, why = node.readiness()
    ring = node.standing.ring()
    membership = node.standing.membership
    return {
        "id": node.node_id, "role": WORKER, "pid": os.getpid(),
        "ready": ready, "ready_reason": why,
        "ring_epoch": ring.epoch if ring is not None else None,
        "last_heartbeat": membership.last_heartbeat if membership is not None else None,
        "http": node.http_url, "metrics": f"{node.http_url}/metrics" if node.http_url else None,
        "draining": node.standing.draining,
        "transactions": len(node.transactions),
        "location_revision": node.stores.cache.revision if node.stores is not None else None,
        "proxy_contexts": len(node.tu.contexts) if node.tu is not None else 0,
        "edges": sorted(node.links.edges),
        "stats": dict(node.stats),
        "link_auth_failures": dict(node.link_guard.failures),
    }


class SipCounts:
    """Requests by method and responses by code, in and out, counted on the
    worker's message path."""

    __slots__ = ("requests_in", "requests_out", "responses_in", "responses_out")

    def __init__(self) -> None:
        self.requests_in: Counter[str] = Counter()
        self.requests_out: Counter[str] = Counter()
        self.responses_in: Counter[int] = Counter()
        self.responses_out: Counter[int] = Counter()

    @staticmethod
    def count(message: Message, requests: Counter, responses: Counter) -> None:
        if type(message) is Request:
            method = message.method
            # Invented methods must not create time series.
            requests[method if method in KNOWN_METHODS else "other"] += 1
        else:
            responses[message.status] += 1  # type: ignore[attr-defined]  # not a Request: a Response
