"""The edge's metrics: what it reads, forwards, sends and refuses, its sockets and queues.

Read at scrape time from the plain counters the edge's hot paths keep
(``Forwarder.stats``, ``Forwarder.received``) and its sockets
(``/proc/net/udp``); the common families come from
``cluster.observability.node_metrics``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from cluster.observability.metrics import MetricsEndpoint, one
from cluster.observability.node_metrics import admission_metrics, drops, node_metrics

if TYPE_CHECKING:  # pragma: no cover
    from .node import EdgeNode

__all__ = ["edge_metrics", "udp_socket_queue"]


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


STREAM_EVENTS = ("tls_", "ws_", "wss_")


def edge_metrics(node: EdgeNode) -> MetricsEndpoint:
    """The edge's ``/metrics``: the common families and the edge's own."""
    endpoint = node_metrics("edge", node)
    forwarder = node.forwarder
    stats = node.stats
    endpoint.counter("sipcluster_edge_received_total", "SIP messages read from the network (keep-alives excluded), by transport.",
                     lambda: [(v, {"transport": t.lower()}) for t, v in list(forwarder.received.items())])
    endpoint.counter("sipcluster_edge_forwarded_total", "Messages forwarded to a worker shard.",
                     lambda: one(stats["forwarded"]))
    endpoint.counter("sipcluster_edge_sent_total", "Messages from workers written to the network, by transport.",
                     lambda: [(stats[f"sent_{t}"], {"transport": t}) for t in ("udp", "tcp", "tls", "ws", "wss")])
    endpoint.counter("sipcluster_edge_rejected_total",
                     "Requests the edge answered itself instead of forwarding (503 no worker / link down / overload, 513 too large).",
                     lambda: [(stats["unroutable_no_worker"], {"reason": "no_worker"}),
                              (stats["unroutable_link_down"], {"reason": "link_down"}),
                              (stats["drop_oversize"], {"reason": "oversize"}),
                              (stats["shed_rejected"], {"reason": "overload"})])
    endpoint.counter("sipcluster_edge_keepalives_total", "CRLF keep-alives answered or absorbed (RFC 5626 §3.5.1), by transport.",
                     lambda: [(stats["udp_keepalive"], {"transport": "udp"}),
                              (stats["tcp_keepalive"], {"transport": "tcp"})])
    router = forwarder.router
    # Failover (DESIGN §4, ops/guide/operations.md "Failover").
    endpoint.gauge("sipcluster_edge_suspect_workers",
                   "Workers in etcd's ring whose link is down: routed around until the link returns or the lease expires.",
                   lambda: one(len(router.suspects)))
    endpoint.gauge("sipcluster_edge_held_workers",
                   "Workers routed to although etcd's view lost every worker at once (an etcd stall): links up, leases gone.",
                   lambda: one(len(router.held)))
    endpoint.gauge("sipcluster_edge_pinned_call_ids",
                   "Call-IDs kept on the shard that took them over while their owner was away.",
                   lambda: one(router.pinned))
    endpoint.counter("sipcluster_edge_rerouted_total",
                     "Messages routed away from a worker whose link is down or that left the ring within the pin time.",
                     lambda: one(router.rerouted))
    endpoint.counter("sipcluster_edge_link_events_total",
                     "Worker links seen going down (disconnect, missed heartbeats, refused send) or coming back up.",
                     lambda: [(stats["link_suspect"], {"event": "down"}),
                              (stats["link_restored"], {"event": "up"})])
    endpoint.counter("sipcluster_ring_changes_total",
                     "Membership views from etcd whose set of ring workers differs from the previous one.",
                     lambda: one(node.ring_changes))
    endpoint.gauge("sipcluster_edge_tcp_connections", "Open TCP connections.",
                   lambda: one(len(node.tcp.connections)))
    endpoint.gauge("sipcluster_edge_connections", "Open stream connections, by transport (tcp, tls, ws, wss).",
                   lambda: [(len(s.connections), {"transport": t.lower()}) for t, s in node.streams.items()])
    endpoint.counter("sipcluster_edge_stream_events_total",
                     "TLS and WebSocket events by name: handshakes cut or failed, refused upgrades, oversized or "
                     "non-SIP frames, keep-alive timeouts, write queues full, certificate reloads.",
                     lambda: [(v, {"event": k}) for k, v in list(stats.items()) if k.startswith(STREAM_EVENTS)])
    guard = node.guard
    endpoint.gauge("sipcluster_edge_bans", "Source addresses this edge drops (its own rate bans and etcd's bans).",
                   lambda: one(len(guard.bans)))
    endpoint.counter("sipcluster_edge_bans_total", "Bans made here or learnt, by reason: rate (edge.rate_limit) "
                     "or evicted (edge.max_bans full, the oldest forgotten).",
                     lambda: [(stats["ban_rate"], {"reason": "rate"}), (guard.bans.evicted, {"reason": "evicted"})])

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
                   lambda: udp_readings(0))
    endpoint.counter("sipcluster_udp_kernel_drops_total", "Datagrams the kernel dropped on each UDP socket (receive buffer full).",
                     lambda: udp_readings(1))
    endpoint.counter("sipcluster_drops_total", "Messages dropped without an answer, by reason.",
                     lambda: drops(stats))

    def queues():
        used = 0
        for conn in list(node.tcp.connections.values()):
            used += conn.outgoing.statistics().current_buffer_used
        return [(used, {"queue": "tcp_out"})]
    endpoint.gauge("sipcluster_queue_depth", "Items waiting in the node's bounded queues, by queue.", queues)
    if forwarder.admission is not None:
        admission_metrics(endpoint, forwarder.admission)
    endpoint.histogram(node.hops)
    return endpoint


