"""The metrics each node exports: names, meanings, and where the values come from.

Everything here runs at scrape time: callbacks read the plain counters the
hot paths keep (``stats`` Counters, ``ObservedTransactionLayer`` counters,
``HotHistogram`` series) and the nodes' current state.
``MetricsEndpoint.names()`` lists every family a node exports;
``tests/observability`` checks a real scrape against it, and the ``ops/``
dashboards and alerts against a real scrape.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Iterable

import trio

from .etcd import EtcdErrors
from .metrics import ETCD_BOUNDS, MetricsEndpoint, one

if TYPE_CHECKING:  # pragma: no cover
    from nodes.edge.node import EdgeNode
    from nodes.worker.node import WorkerNode

__all__ = ["KNOWN_METHODS", "edge_metrics", "worker_metrics", "udp_socket_queue"]

#: Methods counted by name; anything else is "other" (an attacker's invented
#: methods must not create time series).
KNOWN_METHODS = frozenset((
    "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK", "SUBSCRIBE", "NOTIFY",
    "PUBLISH", "INFO", "REFER", "MESSAGE", "UPDATE",
))


def udp_socket_queue(inode: int, v6: bool) -> tuple[int, int] | None:
    """(receive queue bytes, kernel drops) of the UDP socket with ``inode``,
    from /proc/net/udp[6]; None where that file does not exist or lacks it."""
    try:
        with open("/proc/net/udp6" if v6 else "/proc/net/udp") as file:
            next(file)
            for line in file:
                fields = line.split()
                if len(fields) >= 13 and fields[9] == str(inode):
                    return int(fields[4].split(":")[1], 16), int(fields[12])
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return None


def _events(stats) -> Iterable[tuple[float, dict]]:
    return [(value, {"event": key}) for key, value in list(stats.items())]


def _drops(stats, extra: Iterable[tuple[str, int]] = ()) -> list[tuple[float, dict]]:
    out = [(value, {"reason": key[5:]}) for key, value in list(stats.items()) if key.startswith("drop_")]
    out.extend((value, {"reason": reason}) for reason, value in extra if value)
    return out


def _common(endpoint: MetricsEndpoint, node) -> EtcdErrors:
    """Metrics every node has: readiness, ring, raw events, drops, etcd."""
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
    _collector(endpoint, node)
    errors = EtcdErrors()
    node.etcd_latency = endpoint.histogram(
        "sipcluster_etcd_request_duration_seconds",
        "etcd operations (not watch waits) by client and operation, including failed ones.",
        ETCD_BOUNDS, threaded=True)
    node.etcd_errors = errors
    endpoint.counter("sipcluster_etcd_errors_total", "Failed etcd operations by client and operation.",
                     lambda: [(v, {"client": c, "op": o}) for (c, o), v in errors.snapshot().items()])
    endpoint.counter("sipcluster_etcd_auth_failures_total",
                     "etcd operations refused for who the node is (wrong password, rejected token, missing "
                     "permission, expired client certificate), by client; also in sipcluster_etcd_errors_total.",
                     lambda: [(v, {"client": c}) for c, v in errors.auth_snapshot().items()])
    return errors


def _collector(endpoint: MetricsEndpoint, node) -> None:
    """The garbage collector policy of nodes/collector.py, when the node runs one."""
    def stats():
        collector = getattr(node, "collector", None)
        return None if collector is None else collector.stats

    def collections():
        s = stats()
        return [] if s is None else [(s.collections, {"kind": "automatic"}), (s.sweeps, {"kind": "sweep"})]

    def pauses():
        s = stats()
        return [] if s is None else [(s.pause_total_s, {"kind": "automatic"}),
                                     (s.sweep_pause_total_s, {"kind": "sweep"})]
    endpoint.counter("sipcluster_gc_collections_total",
                     "Cyclic garbage collections: automatic (young objects only) and full sweeps.", collections)
    endpoint.counter("sipcluster_gc_pause_seconds_total",
                     "Time the node stood still in the garbage collector, by kind.", pauses)


def edge_metrics(node: EdgeNode) -> MetricsEndpoint:
    endpoint = MetricsEndpoint(role="edge", node_id=node.node_id)
    _common(endpoint, node)
    forwarder = node.forwarder
    stats = node.stats
    endpoint.counter("sipcluster_edge_received_total", "SIP messages read from the network (keep-alives excluded), by transport.",
                     lambda: [(v, {"transport": t.lower()}) for t, v in list(forwarder.received.items())])
    endpoint.counter("sipcluster_edge_forwarded_total", "Messages forwarded to a worker shard.",
                     lambda: one(stats["forwarded"]))
    endpoint.counter("sipcluster_edge_sent_total", "Messages from workers written to the network, by transport.",
                     lambda: [(stats["sent_udp"], {"transport": "udp"}), (stats["sent_tcp"], {"transport": "tcp"})])
    endpoint.counter("sipcluster_edge_rejected_total",
                     "Requests the edge answered itself instead of forwarding (503 no worker / link down, 513 too large).",
                     lambda: [(stats["unroutable_no_worker"], {"reason": "no_worker"}),
                              (stats["unroutable_link_down"], {"reason": "link_down"}),
                              (stats["drop_oversize"], {"reason": "oversize"})])
    endpoint.counter("sipcluster_edge_keepalives_total", "CRLF keep-alives answered or absorbed (RFC 5626 §3.5.1), by transport.",
                     lambda: [(stats["udp_keepalive"], {"transport": "udp"}),
                              (stats["tcp_keepalive"], {"transport": "tcp"})])
    endpoint.gauge("sipcluster_edge_tcp_connections", "Open TCP connections.",
                   lambda: one(len(node.tcp.connections)))

    def udp_readings(index: int):
        out = []
        for (host, port), listener in list(node.udp.items()):
            try:
                inode = os.fstat(listener.sock.fileno()).st_ino
            except OSError:
                continue
            found = udp_socket_queue(inode, ":" in host)
            if found is not None:
                out.append((found[index], {"socket": f"{host}:{port}"}))
        return out
    endpoint.gauge("sipcluster_udp_receive_queue_bytes", "Bytes waiting in each UDP socket's kernel receive queue.",
                   lambda: udp_readings(0), unit="By")
    endpoint.counter("sipcluster_udp_kernel_drops_total", "Datagrams the kernel dropped on each UDP socket (receive buffer full).",
                     lambda: udp_readings(1))
    endpoint.counter("sipcluster_drops_total", "Messages dropped without an answer, by reason.",
                     lambda: _drops(stats))

    def queues():
        used = 0
        for conn in list(node.tcp.connections.values()):
            used += conn.outgoing.statistics().current_buffer_used
        return [(used, {"queue": "tcp_out"})]
    endpoint.gauge("sipcluster_queue_depth", "Items waiting in the node's bounded queues, by queue.", queues)
    node.turnaround = endpoint.histogram(
        "sipcluster_hop_latency_seconds",
        "Per-hop latency: edge_to_worker (link, worker-observed), worker (processing of one message), "
        "edge_worker_edge (edge receive to the edge writing the answer or forwarded copy, one clock).",
    ).series(hop="edge_worker_edge")
    return endpoint


def worker_metrics(node: WorkerNode) -> MetricsEndpoint:
    endpoint = MetricsEndpoint(role="worker", node_id=node.node_id)
    _common(endpoint, node)
    layer = node.transactions
    stats = node.stats
    counts = node.sip_counts

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
                     lambda: [(v, {"type": t}) for t, v in list(layer.started.items())])
    endpoint.counter("sipcluster_transactions_total",
                     "Transactions by type and outcome (final response class, timeout, transport_error).",
                     lambda: [(v, {"type": t, "outcome": o}) for (t, o), v in list(layer.outcomes.items())])
    endpoint.counter("sipcluster_transaction_timeouts_total", "Transaction timers that gave up, by timer (B, F, H, C).",
                     lambda: [(v, {"timer": t}) for t, v in list(layer.timeouts.items())])
    endpoint.gauge("sipcluster_transactions_active", "Live client and server transactions.",
                   lambda: one(len(layer)))
    endpoint.counter("sipcluster_retransmissions_total",
                     "Retransmissions: sent by our transactions, and received (absorbed) from peers.",
                     lambda: [(layer.counters.retransmissions_sent, {"direction": "sent"}),
                              (layer.counters.retransmissions_absorbed, {"direction": "received"})])
    endpoint.counter("sipcluster_calls_started_total", "Initial INVITEs received (new calls).",
                     lambda: one(layer.calls_started))
    endpoint.counter("sipcluster_calls_answered_total", "Calls answered with a 2xx.",
                     lambda: one(layer.calls_answered))
    endpoint.counter("sipcluster_calls_failed_total", "Calls ended by a final response >= 300, by code (487: cancelled).",
                     lambda: [(v, {"code": str(c)}) for c, v in list(layer.calls_failed.items())])
    endpoint.gauge("sipcluster_dialogs_active",
                   "Dialogs confirmed through this shard and not yet ended by BYE (estimate; see docs).",
                   lambda: one(layer.active_dialogs(trio.current_time())))
    endpoint.gauge("sipcluster_proxy_contexts", "Proxied requests waiting for their final response.",
                   lambda: one(len(node.tu.contexts) if node.tu is not None else 0))

    def registrations():
        locations = node.locations
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
        locations = node.locations
        return one(locations.stale_for(trio.current_time())) if locations is not None else []
    endpoint.gauge("sipcluster_location_cache_staleness_seconds",
                   "Seconds since the location cache's watch last delivered (0 while healthy).", staleness, unit="s")

    def ownership():
        share = node.ring_share()
        return one(share) if share is not None else []
    endpoint.gauge("sipcluster_shard_ownership_ratio", "Share of the Call-ID hash space this shard owns (0..1).",
                   ownership)
    endpoint.gauge("sipcluster_worker_draining", "1 while the worker drains (left the ring, finishing transactions).",
                   lambda: one(1.0 if node.draining else 0.0))
    endpoint.counter("sipcluster_transaction_events_total",
                     "Transaction layer events: stray responses and ACKs, merged requests, malformed and illegal inputs.",
                     lambda: [(getattr(layer.counters, name), {"event": name}) for name in (
                         "stray_responses", "stray_acks", "unmatched_tu_responses", "merged_requests",
                         "malformed", "illegal_inputs", "transport_errors")])
    endpoint.counter("sipcluster_drops_total", "Messages dropped without an answer, by reason.",
                     lambda: _drops(stats, [("malformed", stats["parse_error"] - stats["answered_malformed"])]))

    def queues():
        out = [(node.link_batch, {"queue": "link_batch"})]
        store = node.store
        for name, attr in (("registrar_reads", "_read_in"), ("registrar_writes", "_write_in")):
            channel = getattr(store, attr, None)
            if channel is not None:
                out.append((channel.statistics().current_buffer_used, {"queue": name}))
        return out
    endpoint.gauge("sipcluster_queue_depth",
                   "Items waiting in the node's queues (link_batch: envelopes drained in the last wakeup).", queues)
    hops = endpoint.histogram(
        "sipcluster_hop_latency_seconds",
        "Per-hop latency: edge_to_worker (link, worker-observed), worker (processing of one message), "
        "edge_worker_edge (edge receive to the edge writing the answer or forwarded copy, one clock).")
    node.link_latency = hops.series(hop="edge_to_worker")
    node.processing_latency = hops.series(hop="worker")
    return endpoint

