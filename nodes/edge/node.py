"""The edge node: owns the SIP sockets, keeps no call state (DESIGN §2).

It follows the membership view to keep the ring and the links to workers up
to date, forwards every inbound message to the Call-ID's owner, and writes
outbound envelopes from workers to the network.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import Counter

import trio

from cluster.config import Config
from cluster.coordination import EtcdMembership
from cluster.defence.admission import Admission
from cluster.defence.store import BanPublisher
from cluster.link import READS as LINK_READS
from cluster.link import (
    Envelope, Inbox, LinkAuthenticator, LinkError, LinkGuard, LinkWatch, Outbox, node_context,
    node_keys, unpack_frame,
)
from cluster.observability.etcd import EtcdMetrics
from cluster.observability.node_metrics import hop_latency
from cluster.observability.tracing import Tracing
from cluster.sharding.membership import EDGE, WORKER, Member, MembershipView
from cluster.sip import ParseError, reject_malformed

from .defence import EdgeBans, EdgeDefenceEvents, build_guard
from .forwarder import Forwarder
from .tcp import TcpTransport
from .tls import TlsContexts, TlsTransport
from .udp import UdpListener
from .ws import WsTransport

log = logging.getLogger("sipcluster.edge")

YIELD_EVERY = 512
"""Messages written out before the link loop lets other tasks run."""

SERVER = "sipcluster-edge"
SWEEP = 0.25
"""Seconds between looks at etcd's health and expired Call-ID pins."""


class EdgeNode:
    role = EDGE

    def __init__(self, config: Config, *, tracing: Tracing | None = None, collector=None) -> None:
        """``tracing`` when tracing is on; ``collector``, the garbage
        collector policy the node runs under (``nodes.collector``), for its metrics."""
        self.config = config
        self.node_id = config.cluster.node_id
        # Its own context: the ZAP handler is per context (cluster.link).
        self.context = node_context()
        self.keys = node_keys(config.cluster.link_secret_dir)
        # Only workers write to an edge's link: their ``out`` envelopes name
        # any address, and the edge writes the data there.
        self.link_guard = LinkGuard(accept=(WORKER,))
        self.authenticator = LinkAuthenticator(self.context, self.link_guard)
        self.inbox = Inbox(self.context, config.edge.link, hwm=config.edge.queue, keys=self.keys)
        self.authenticator.watch(self.inbox)
        # Worker links followed by their sockets' events: a dead worker is
        # routed around within a second, before its lease expires (DESIGN §4).
        self.link_watch = LinkWatch()
        self.outbox = Outbox(self.context, hwm=config.edge.queue, keys=self.keys, watch=self.link_watch)
        self.stats: Counter[str] = Counter()
        self.ban_publisher = BanPublisher(config.cluster.prefix, self.stats)
        self.defence_events = EdgeDefenceEvents(self.node_id, self.stats, config.edge.rate_limit,
                                                self.ban_publisher)
        self.guard = build_guard(config.edge, self.defence_events)
        self.forwarder = Forwarder(self.node_id, self.outbox, max_message=config.edge.max_message,
                                   server=SERVER, tracing=tracing, guard=self.guard, stats=self.stats,
                                   admission=Admission())
        self.udp: dict[tuple[str, int], UdpListener] = {}
        for listen in config.edge.listen:
            if listen.transport == "udp":
                listener = UdpListener(listen.host, listen.port, self.forwarder,
                                       batch=config.edge.udp_batch)
                self.udp[listener.local] = listener
        self.tcp = TcpTransport(self.forwarder, idle_timeout=config.edge.tcp_idle_timeout,
                                max_connections=config.edge.max_connections,
                                message_timeout=config.edge.tcp_message_timeout,
                                per_source=config.edge.max_connections_per_source)
        self._build_secure_transports(config)
        self.membership: EtcdMembership | None = None
        self.view: MembershipView | None = None
        self.http_url = ""
        # Observability (DESIGN §9): plain values the metrics read at scrape time.
        self.tracing = tracing
        self.collector = collector
        self.hops = hop_latency()
        self.turnaround = self.hops.series(hop="edge_worker_edge")
        """Edge receive → the answer or forwarded copy written by an edge (one clock)."""
        self.etcd_metrics = EtcdMetrics()
        self._ring_ready = trio.Event()
        self.sip_open = False
        """The SIP sockets are read (once the ring had a worker)."""
        self.ring_changes = 0
        """Rings received from etcd whose workers differ from the previous one."""

    def _build_secure_transports(self, config: Config) -> None:
        """TLS (always, for outgoing ``sips:``), WS and WSS (with a listener)."""
        edge = config.edge
        self.tls_contexts = TlsContexts(edge, self.stats)
        idle, most, handshake = edge.tcp_idle_timeout, edge.max_connections, edge.tls_handshake_timeout
        slow, per_source = edge.tcp_message_timeout, edge.max_connections_per_source
        self.tls = TlsTransport(self.forwarder, self.tls_contexts, idle_timeout=idle, max_connections=most,
                                handshake_timeout=handshake, message_timeout=slow, per_source=per_source)
        self.ws, self.wss = (
            WsTransport(self.forwarder, contexts=contexts, origins=edge.ws_origins,
                        ping_interval=edge.ws_ping_interval, idle_timeout=idle, max_connections=most,
                        handshake_timeout=handshake, message_timeout=slow, per_source=per_source)
            for contexts in (None, self.tls_contexts))
        self.streams: dict[str, TcpTransport] = {"TCP": self.tcp, "TLS": self.tls, "WS": self.ws, "WSS": self.wss}

    def listeners(self) -> list[str]:
        """Every bound SIP socket as ``transport:host:port``."""
        out = [f"udp:{_hostport(h, p)}" for h, p in self.udp]
        for name, stream in self.streams.items():
            out += [f"{name.lower()}:{_hostport(h, p)}" for h, p in stream.locals]
        return out

    # -- addresses -------------------------------------------------------------

    def _advertise(self) -> dict[str, str]:
        """host:port per transport that workers put in Via and Record-Route.
        With no configured port each transport advertises its own bound port."""
        host, port = self.config.edge.advertised()
        explicit_port = self.config.edge.advertise is not None and ":" in self.config.edge.advertise.rsplit("]", 1)[-1]
        host_text = f"[{host}]" if ":" in host and not host.startswith("[") else host
        out: dict[str, str] = {}
        for transport, locals_ in (("UDP", list(self.udp)), ("TCP", self.tcp.locals)):
            if locals_:
                out[transport] = f"{host_text}:{port if explicit_port else locals_[0][1]}"
        for transport in ("TLS", "WS", "WSS"):
            # Their own port: edge.advertise's port is the UDP and TCP one.
            locals_ = self.streams[transport].locals
            if locals_:
                out[transport] = f"{host_text}:{locals_[0][1]}"
        return out

    def member(self) -> Member:
        return Member(id=self.node_id, role=EDGE, link=self.inbox.endpoint, http=self.http_url,
                      pid=os.getpid(), host=socket.gethostname(), started=time.time(),
                      link_version=LINK_READS, curve_key=self.keys.public.decode(),
                      sip=tuple(sorted(self.forwarder.advertise.items())))

    # -- running -----------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        config = self.config
        async with trio.open_nursery() as nursery:
            await nursery.start(self.authenticator.run)
            await nursery.start(self.link_watch.run, self._link_event)
            self.membership = EtcdMembership.from_config(
                config, self.member(), observer=self.etcd_metrics.client("membership"))
            await nursery.start(self.membership.run)
            await self._start_bans(nursery)
            nursery.start_soon(self._follow_membership)
            nursery.start_soon(self._link_loop)
            nursery.start_soon(self._sweep)
            # SIP is read only once a worker can take it: a request that
            # arrives earlier waits in the socket buffer instead of being
            # answered 503 "no worker in the ring" (a restarted edge did).
            await self._ring_ready.wait()
            for listener in self.udp.values():
                await nursery.start(listener.run)
            for name, stream in self.streams.items():
                bind = [(listen.host, listen.port) for listen in config.edge.listen
                        if listen.transport == name.lower()]
                if bind:
                    await nursery.start(stream.run, bind)
            if not self.tls.locals:
                await nursery.start(self.tls.run_outgoing)
            await nursery.start(self.tls_contexts.run)
            self.forwarder.advertise = self._advertise()
            # Workers read our address per transport from the record (Member.sip):
            # their Vias and Record-Routes, and where set probes get answered.
            await self.membership.update(self.member())
            self.sip_open = True
            log.info("edge ready", extra={"node": self.node_id, "listeners": self.listeners(),
                                          "link": self.inbox.endpoint})
            task_status.started()

    async def _start_bans(self, nursery: trio.Nursery) -> None:
        """Share the rate bans made here and enforce every edge's and worker's
        address bans (``cluster.defence.store``)."""
        from cluster.coordination import EtcdStore
        from cluster.defence import ADDRESS
        from cluster.defence.store import BanFeed
        store = EtcdStore.from_config(self.config.cluster, observer=self.etcd_metrics.client("bans"))
        prefix = self.config.cluster.prefix
        bans = EdgeBans(self.guard)
        await nursery.start(self.ban_publisher.run, store)
        await nursery.start(BanFeed(store, prefix, kinds=(ADDRESS,), put=bans.put, lifted=bans.lifted,
                                    reset=bans.reset, stats=self.stats).run)

    async def _follow_membership(self) -> None:
        assert self.membership is not None
        async for view in self.membership.views():
            self.view = view
            self.link_guard.update(view.members.values())
            ring = view.ring()
            # A worker without a published key runs a release with plaintext
            # links: not linked to (its calls are answered 503) until upgraded.
            workers = [m for m in view.workers() if m.curve_key]
            links = {m.id: m.link for m in workers}
            previous = self.forwarder.router.ring
            self.forwarder.update(ring, links, {m.link for m in workers if m.link_version >= 2},
                                  {m.link: m.curve_key.encode() for m in workers},
                                  present={m.id for m in view.workers()})
            if previous is None or previous.members != ring.members:
                self.ring_changes += 1
                router = self.forwarder.router
                log.info("ring changed", extra={"epoch": ring.epoch, "workers": list(ring.members),
                                                "held": list(router.held),
                                                "suspects": sorted(router.suspects)})
                if router.held:
                    log.warning("etcd's view lost every worker at once; routing to the ones whose "
                                "links are up until they register again", extra={"held": list(router.held)})
            self._refresh_current()

    def _link_event(self, endpoint: str, up: bool) -> None:
        if up:
            self.forwarder.link_up(endpoint)
            # A worker in the ring whose link is up: SIP can be read (a send
            # on a link still connecting would be refused).
            if self.forwarder.link_workers.get(endpoint) in (self.forwarder.ring or ()):
                self._ring_ready.set()
        else:
            self.forwarder.link_down(endpoint)

    def _refresh_current(self) -> None:
        # Current: etcd confirmed our own lease within half a TTL and the
        # ring is etcd's. A stalled etcd makes the edges non-current (at
        # most TTL/2) before any worker's lease can be in doubt (at least
        # 2/3 TTL: keep-alives go every TTL/3), so no worker fences itself
        # against edges that lost etcd too (cluster.sharding.fence).
        membership = self.membership
        self.forwarder.current = membership is not None and membership.ready \
            and membership.lease_alive(trio.current_time(), margin=membership.ttl / 2) \
            and not self.forwarder.router.held

    async def _sweep(self) -> None:
        while True:
            await trio.sleep(SWEEP)
            self._refresh_current()
            self.forwarder.router.expire(time.monotonic())

    async def _link_loop(self) -> None:
        stats = self.stats
        while True:
            sent = 0
            for raw in await self.inbox.receive_batch():
                try:
                    envelopes = unpack_frame(raw)
                except LinkError:
                    stats["link_bad_envelope"] += 1
                    continue
                for env in envelopes:
                    try:
                        self.egress(env)
                    except Exception:  # noqa: BLE001
                        # A bad envelope (or a bug) costs that message only.
                        self.forwarder.bug("egress failed")
                for listener in self.udp.values():
                    stats["sent_udp"] += listener.flush_out()
                sent += len(envelopes)
                if sent >= YIELD_EVERY:
                    # Frames hold many messages: let the UDP listeners and
                    # the lease keeper run within a long batch.
                    sent = 0
                    await trio.lowlevel.checkpoint()

    def egress(self, env: Envelope) -> None:
        if env.kind != "out":
            self.stats["link_unexpected_kind"] += 1
            return
        if env.ts_ns:
            # The worker copies the ts_ns of the envelope it was processing:
            # edge receive → edge write, measured on the edges' clock.
            self.turnaround.observe_ns(time.time_ns() - env.ts_ns)
        if env.trace is not None and self.tracing is not None:
            self.tracing.edge_send(env)
        if env.transport == "UDP":
            listener = self.udp.get(env.local) or self._udp_for(env.peer[0])
            if listener is None:
                self.stats["drop_no_udp_socket"] += 1
                return
            listener.queue(env.data, env.peer)  # sent when the frame is done (_link_loop)
        else:
            stream = self.streams.get(env.transport)
            if stream is None:
                self.stats["drop_unsupported_transport"] += 1
            elif stream.send(env.data, env.peer, env.conn, flow=env.flow):
                self.stats[f"sent_{env.transport.lower()}"] += 1
            elif env.flow:
                self._flow_failed(env)

    def _flow_failed(self, env: Envelope) -> None:
        """A strict flow's connection is gone (RFC 5626 §5.3): a request on
        it is answered 430 Flow Failed, which goes to the worker holding its
        client transaction like any response (the worker's Via names it), so
        that worker tries the UA's next flow. Nothing is dialled instead."""
        self.stats["flow_failed"] += 1
        answer = reject_malformed(env.data, ParseError("the flow's connection is gone", 430), server=SERVER)
        if answer is not None:
            self.forwarder.ingress(answer, env.transport, env.peer, env.local, None)

    def _udp_for(self, host: str) -> UdpListener | None:
        want_v6 = ":" in host
        for local, listener in self.udp.items():
            if (":" in local[0]) == want_v6:
                return listener
        return None

    def readiness(self) -> tuple[bool, str]:
        """(ready, why): registered in etcd, following the membership, a
        ring with at least one worker to forward to, and the SIP sockets
        read (they open once a worker link is live): a load balancer or a
        Kubernetes Service sends traffic only to an edge that serves it."""
        membership = self.membership
        if membership is None:
            return False, "starting"
        if not membership.ready:
            return False, "etcd unreachable or membership not current"
        ring = self.forwarder.ring
        if ring is None or not len(ring):
            return False, "no worker in the ring"
        if not self.sip_open:
            return False, "SIP sockets not open yet (no live worker link)"
        return True, "ready"

    def status(self) -> dict:
        ready, why = self.readiness()
        return {
            "id": self.node_id, "role": EDGE, "pid": os.getpid(),
            "ready": ready, "ready_reason": why,
            "http": self.http_url, "metrics": f"{self.http_url}/metrics" if self.http_url else None,
            "ring_epoch": self.forwarder.ring.epoch if self.forwarder.ring else None,
            "last_heartbeat": self.membership.last_heartbeat if self.membership else None,
            "workers": sorted(self.forwarder.worker_links),
            "suspect_workers": sorted(self.forwarder.router.suspects),
            "held_workers": list(self.forwarder.router.held),
            "pinned_call_ids": self.forwarder.router.pinned,
            "sip_open": self.sip_open,
            "udp": [f"{h}:{p}" for h, p in self.udp], "tcp": [f"{h}:{p}" for h, p in self.tcp.locals],
            "tcp_connections": len(self.tcp.connections),
            "listeners": self.listeners(),
            "connections": {name.lower(): len(stream.connections) for name, stream in self.streams.items()},
            "advertise": self.forwarder.advertise,
            "stats": dict(self.stats),
            "link_auth_failures": dict(self.link_guard.failures),
        }


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
