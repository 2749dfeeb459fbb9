"""The worker shard's runtime: the I/O adapter of its transaction user.

One trio process per core (DESIGN §5). The SIP decisions live in the sans-IO
``cluster.tu.TransactionUser``; this module feeds it and carries out what it
returns. Inbound envelopes are parsed once, at the one parse-error boundary
(``parse_complete``): a request that fails is answered 400 with the reason
(RFC 3261 §8.2.6, via ``reject_malformed``) through the edge it came from; a
broken response is dropped and counted. The TU's outputs are sends (through
the edge its ``EdgeRoute`` names, or any linked edge for a route the TU made
whose edge is gone) and registrations (an etcd task, whose response goes back
to the TU). One task sleeps until the TU's next deadline.

Observability (DESIGN §9) on the message path is plain counting (requests
and responses by method and code, link and processing latency, the
transaction layer's own counts), one ``tracing is None`` test when tracing is
off and one ``sip_log.active`` test when no SIP message logging is selected.
An outbound envelope copies the ``ts_ns`` of the inbound one being processed,
so the edge measures edge → worker → edge on its own clock.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import socket
import time
from collections import Counter
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING

import trio

from cluster.config import Config
from cluster.coordination import EtcdMembership
from cluster.link import READS as LINK_READS
from cluster.link import (
    Envelope, FrameQueue, Inbox, LinkAuthenticator, LinkError, LinkGuard, Outbox, node_context,
    node_keys, pack, pack_v2, unpack_frame,
)
from cluster.logs import CALL_ID
from cluster.observability.etcd import EtcdMetrics, TracedLocations, TracedLocationStore
from cluster.observability.node_metrics import KNOWN_METHODS, hop_latency
from cluster.observability.sip_logging import SipLogSelection
from cluster.observability.tracing import RouteSpans, Tracing
from cluster.observability.transactions import TransactionCounts
from cluster.sharding.membership import EDGE, WORKER, Member, MembershipView
from cluster.sip import (
    Message, ParseError, Request, Response, answer_internal_error, parse_complete, reject_malformed,
)
from cluster.sip.transaction import TransactionLayer
from cluster.sip.transaction.actions import Send
from cluster.sip.transaction.peer import Peer
from cluster.sip.transaction.timers import TimerConfig
from cluster.tu import EdgeRoute, TransactionUser, route_of
from cluster.tu.outputs import NO_LOCAL

from .application import load_application

if TYPE_CHECKING:  # pragma: no cover
    from cluster.registrar.cache import LocationCache
    from cluster.registrar.etcd_store import EtcdLocationStore
    from cluster.registrar.store import LocationStore
    from nodes.worker.defence import PasswordGuard
    from nodes.worker.feeds import UserFeed
    from nodes.worker.services import Services

log = logging.getLogger("sipcluster.worker")

SERVER = "sipcluster-worker"
FRAME_EVERY = 16
"""Inbound frames handled before the frames they produced are sent, at most."""
YIELD_EVERY = 256
"""Inbound messages handled before the link loop lets other tasks run."""
CHALLENGE_SWEEP = 2.0
"""Seconds between looks for digest challenges left unanswered."""
USER_BANS = 65536
"""Most user bans a worker holds (password guessing); the oldest go first."""


class WorkerNode:
    role = WORKER

    def __init__(self, config: Config, application=None, *, services=None,
                 tracing: Tracing | None = None, collector=None) -> None:
        """``services`` starts the transaction user at once (tests; ``run``
        builds them otherwise); ``tracing`` when tracing is on; ``collector``,
        the garbage collector policy the node runs under (``nodes.collector``),
        for its metrics."""
        self.config = config
        self.node_id = config.cluster.node_id
        # Its own context: the ZAP handler is per context (cluster.link).
        self.context = node_context()
        self.keys = node_keys(config.cluster.link_secret_dir)
        # Only edges write to a worker's link (workers reach each other's
        # transactions through an edge, never directly): the ``in``
        # envelopes whose source address the worker believes (§18.2.1
        # received/rport, registrar bindings, trusted networks).
        self.link_guard = LinkGuard(accept=(EDGE,))
        self.authenticator = LinkAuthenticator(self.context, self.link_guard)
        self.inbox = Inbox(self.context, config.worker.link, keys=self.keys)
        self.authenticator.watch(self.inbox)
        self.outbox = Outbox(self.context, keys=self.keys)
        w = config.worker
        self.transaction_counts = TransactionCounts()
        self.transactions = TransactionLayer(TimerConfig(t1=w.t1, t2=w.t2, t4=w.t4),
                                             observer=self.transaction_counts)
        self.application = application or load_application(w.app, self.node_id)
        self.tracing = tracing
        self.stats: Counter[str] = Counter()
        self.edges: dict[str, str] = {}
        self.array_edges: set[str] = set()
        """Edges that read version-2 envelopes and frames (cluster.link)."""
        # While a link batch or a timer run is handled (_framed), what goes
        # to an edge that reads frames waits here, tagged with its client
        # transaction key, and leaves as one ZeroMQ message per edge.
        self._frames = FrameQueue()
        self._framing = False
        self.membership: EtcdMembership | None = None
        self.view: MembershipView | None = None
        self.http_url = ""
        self._timer_kick = trio.Event()
        self._timer_wake = math.inf
        """The deadline the timer task sleeps until (-inf while it runs)."""
        self.draining = False
        self.services: Services | None = None
        self.store: EtcdLocationStore | None = None
        self.locations: LocationCache | None = None
        self.location_store: LocationStore | None = None
        """The registrar's ``LocationStore``: ``store``, traced when tracing is on."""
        self.users: UserFeed | None = None
        self.password_guard = _password_guard(config, self.node_id, self.stats)
        self.tu: TransactionUser | None = None
        """The transaction user, once the services it needs exist (``run``, or
        ``services`` given here): set before any message or timer is handled,
        which is why its uses below are marked for the type checker."""
        if services is not None:
            self._start_tu(services)
        self._nursery: trio.Nursery | None = None
        # Observability: plain values the metrics read at scrape time.
        self.collector = collector
        self.sip_log = SipLogSelection()
        self.sip_counts = SipCounts()
        self.hops = hop_latency()
        self.link_latency = self.hops.series(hop="edge_to_worker")
        """Edge → worker link (the edge's ts_ns against this clock)."""
        self.processing_latency = self.hops.series(hop="worker")
        """Receive → done with one inbound message (parse, transaction, application)."""
        self.etcd_metrics = EtcdMetrics()
        self.link_batch = 0
        self._origin_ns = 0
        self._untraced = False
        self._ring: tuple = (None, None)

    def member(self) -> Member:
        return Member(id=self.node_id, role=WORKER, link=self.inbox.endpoint, http=self.http_url,
                      pid=os.getpid(), host=socket.gethostname(), started=time.time(),
                      link_version=LINK_READS, curve_key=self.keys.public.decode())

    async def _secret(self, store) -> bytes:
        configured = self.config.worker.nonce_secret
        if configured:
            return configured.encode()
        # No configured secret: the cluster's random one, made by the first
        # worker and kept in etcd (cluster.coordination.secrets) — never
        # derived from public values, or anyone could mint nonces.
        from cluster.coordination.secrets import wait_for_secret
        return await wait_for_secret(store, self.config.cluster.prefix, "nonce")

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        from cluster.coordination import EtcdStore
        from cluster.registrar.cache import LocationCache
        from cluster.registrar.etcd_store import EtcdLocationStore
        from cluster.registrar.rules import RegistrarPolicy
        from nodes.worker.feeds import UserFeed
        from nodes.worker.services import Services

        c = self.config
        w = c.worker
        self.policy = RegistrarPolicy(min_expires=w.registrar_min_expires,
                                      max_expires=w.registrar_max_expires,
                                      default_expires=w.registrar_default_expires)
        etcd = self.etcd_metrics
        kv_store = EtcdStore.from_config(c.cluster, observer=etcd.client("users"))
        store = self.store = EtcdLocationStore(kv_store.access, prefix=c.cluster.prefix,
                                               observer=etcd.client("registrar"))
        cache = self.locations = LocationCache(kv_store.access, prefix=c.cluster.prefix,
                                               observer=etcd.client("location_cache"))
        locations: LocationCache | TracedLocations = cache
        self.location_store = store
        if self.tracing is not None:
            # Spans for a call's etcd work and location lookups.
            self.location_store = TracedLocationStore(store, self.tracing)
            locations = TracedLocations(cache, self.tracing)
        users = self.users = UserFeed(kv_store, c.cluster.prefix)
        self._start_tu(Services(domains=w.domains, trusted=w.trusted, nonce_secret=await self._secret(kv_store),
                                nonce_ttl=w.nonce_ttl, locations=locations,
                                users=users.cache, digest_algorithms=w.digest_algorithms,
                                digest_sha256_domains=w.digest_sha256_domains,
                                outbound_proxy=w.outbound_proxy, events=self.stats,
                                guard=self.password_guard))
        from cluster.app.default import application as default_app
        if self.application is default_app or w.redirect_domains:
            self.application.redirect_domains.update(d.lower() for d in w.redirect_domains)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.authenticator.run)
            await nursery.start(store.run)
            nursery.start_soon(cache.run)
            await nursery.start(users.run)
            await self._start_bans(nursery, kv_store)
            self.membership = EtcdMembership.from_config(self.config, self.member(),
                                                         observer=etcd.client("membership"))
            await nursery.start(self.membership.run)
            from cluster.observability.sip_logging import follow_selection
            nursery.start_soon(follow_selection, kv_store, c.cluster.prefix, self.sip_log)
            nursery.start_soon(self._follow_membership)
            nursery.start_soon(self._link_loop)
            nursery.start_soon(self._timer_loop)
            nursery.start_soon(self._challenge_loop)
            log.info("worker ready", extra={"node": self.node_id, "link": self.inbox.endpoint})
            task_status.started()

    def _start_tu(self, services: Services) -> None:
        self.services = services
        # Tracing sees each routing decision through the TU's observer hook.
        observer = None if self.tracing is None else RouteSpans(self.tracing, self.application.name)
        self.tu = TransactionUser(self.application, self.transactions, services, shard=self.node_id,
                                  salt=self.config.cluster.prefix, stats=self.stats, observer=observer)

    async def _start_bans(self, nursery: trio.Nursery, store) -> None:
        """Publish password-guessing bans; hold the user bans etcd reports."""
        from cluster.defence import USER
        from cluster.defence.store import BanFeed
        guard = self.password_guard
        if guard is None:
            return
        prefix = self.config.cluster.prefix
        if guard.publisher is not None:
            await nursery.start(guard.publisher.run, store)
        await nursery.start(BanFeed(store, prefix, kinds=(USER,), put=lambda ban: guard.put(ban, time.time()),
                                    lifted=guard.lifted, reset=guard.reset, stats=self.stats).run)

    def readiness(self) -> tuple[bool, str]:
        """(ready, why): in the ring (registered, following the membership,
        etcd reachable) and not draining."""
        membership = self.membership
        if membership is None:
            return False, "starting"
        if self.draining:
            return False, "draining"
        if not membership.ready:
            return False, "etcd unreachable or membership not current"
        ring = self._current_ring()
        if ring is None or self.node_id not in ring.members:
            return False, "not in the ring yet"
        return True, "ready"

    def _current_ring(self):
        view = self.view
        if view is None:
            return None
        if self._ring[0] is not view:
            self._ring = (view, view.ring())
        return self._ring[1]

    def ring_share(self) -> float | None:
        """This shard's share of the Call-ID hash space in the current view."""
        ring = self._current_ring()
        if ring is None:
            return None
        return ring.share(self.node_id)

    def in_flight(self) -> int:
        """Transactions still waiting for a final response, and proxied calls."""
        return self.transactions.pending() if self.tu is None else self.tu.in_flight()

    async def drain(self) -> None:
        """SIGTERM: leave the ring, finish in-flight transactions (bounded by
        the drain timeout, Timer B/F = 32 s by default), then return."""
        self.draining = True
        if self.membership is not None and self.membership.member is not None:
            # Out of the ring at once, still a member: edges send new calls
            # elsewhere but keep routing responses for our transactions here
            # (they name this shard in our Via).
            await self.membership.update(dataclasses.replace(self.membership.member, draining=True))
        with trio.move_on_after(self.config.worker.drain_timeout):
            # The TU's count of calls owing a response; nothing signals its zero.
            while self.in_flight():  # noqa: ASYNC110
                await trio.sleep(0.05)
        log.info("worker drained", extra={"node": self.node_id, "in_flight": self.in_flight()})
        if self.membership is not None:
            await self.membership.leave()

    async def _follow_membership(self) -> None:
        assert self.membership is not None
        async for view in self.membership.views():
            self.view = view
            self.link_guard.update(view.members.values())
            # An edge without a published key runs a release with plaintext
            # links: not linked to.
            members = [m for m in view.edges() if m.curve_key]
            edges = {m.id: m.link for m in members}
            for member in members:
                self.outbox.connect(member.link, member.curve_key.encode())
            self.edges = edges
            self.array_edges = {m.id for m in members if m.link_version >= 2}
            if self.password_guard is not None:
                # Each worker counts the failures it sees (cluster.defence.guessing).
                self.password_guard.failures.workers = len(view.workers())

    async def _link_loop(self) -> None:
        while True:
            batch = await self.inbox.receive_batch()
            self.link_batch = len(batch)
            start = 0
            while start < len(batch):
                if start:
                    # Frames carry many messages each: under overload a batch
                    # is seconds of work, and the lease keeper and the timers
                    # must still run within it (a worker whose lease lapses
                    # leaves the ring exactly when it is busiest).
                    await trio.lowlevel.checkpoint()
                now = trio.current_time()
                with self._framed(now):
                    start = self._handle_frames(batch, start, now)
                self.transactions.rest()
                self.kick_timers()

    def _handle_frames(self, batch: list[bytes], start: int, now: float) -> int:
        """Handle ``batch`` from ``start`` until YIELD_EVERY messages are done;
        returns where to go on from."""
        handled = 0
        for n in range(start, len(batch)):
            try:
                envelopes = unpack_frame(batch[n])
            except LinkError:
                self.stats["link_bad_envelope"] += 1
                continue
            for env in envelopes:
                if env.kind == "in":
                    self.receive(env, now)
                else:
                    self.stats["link_unexpected_kind"] += 1
            handled += len(envelopes)
            if handled >= YIELD_EVERY:
                return n + 1
            if (n + 1 - start) % FRAME_EVERY == 0:
                # A long batch does not hold its first answers back.
                self.flush_frames(now)
        return len(batch)

    @contextmanager
    def _framed(self, now: float):
        """Queue what goes to frame-reading edges meanwhile; send it at the end."""
        self._framing = True
        try:
            yield
        finally:
            self._framing = False
            self.flush_frames(now)

    async def _timer_loop(self) -> None:
        while True:
            deadline = self._timer_wake = self._next_deadline()
            with trio.move_on_at(deadline):
                await self._timer_kick.wait()
            # Awake: no kick is needed until the next deadline is computed.
            self._timer_wake = -math.inf
            self._timer_kick = trio.Event()
            self.on_timers(trio.current_time())

    def on_timers(self, now: float) -> None:
        """Run the TU's due timers and send what they produce."""
        tu = self.tu
        if tu is None:
            return
        with self._framed(now):
            # Fired timers are popped before they run, so a bug met by one
            # costs its actions, not the loop (which would stop the worker)
            # and not the timers after it.
            for fire in (tu.transaction_timers, tu.proxy_timers):
                try:
                    self._execute(fire(now), now)
                except Exception:  # noqa: BLE001 - a bug costs this tick, not the worker
                    self._bug("timer handling failed")
        self.transactions.rest()

    async def _challenge_loop(self) -> None:
        """Now and then, log the digest challenges nobody answered (the
        client gave up: often an algorithm it does not know)."""
        while True:
            await trio.sleep(CHALLENGE_SWEEP)
            try:
                self.services.unanswered_challenges(time.time())  # type: ignore[union-attr]
            except Exception:  # noqa: BLE001 - a bug costs this sweep, not the worker
                self._bug("challenge sweep failed")

    def _bug(self, what: str, call_id: str | None = None) -> None:
        """A bug met while handling one message or timer: logged with its
        traceback (call from an ``except`` block) and counted; the caller
        goes on (alert SipclusterInternalErrors)."""
        log.exception(what, extra={} if call_id is None else {"call_id": call_id})
        self.stats["internal_error"] += 1

    def _next_deadline(self) -> float:
        deadline = self.transactions.next_deadline() if self.tu is None else self.tu.next_deadline()
        return math.inf if deadline is None else deadline

    def kick_timers(self) -> None:
        """Wake the timer task when a deadline earlier than the one it sleeps
        until has appeared. Most messages only add later deadlines (Timer K,
        J, ... run for seconds), so they cost two heap peeks, not a task
        switch."""
        if self._next_deadline() < self._timer_wake:
            self._timer_kick.set()

    # -- message path --------------------------------------------------------------

    def receive(self, env: Envelope, now: float) -> None:
        received = time.time_ns()
        if env.ts_ns:
            self.link_latency.observe_ns(received - env.ts_ns)
        self._origin_ns = env.ts_ns
        try:
            try:
                # The one parse-error boundary: every field a later layer
                # reads is checked here, and a request that fails is answered
                # 400 with the reason (§8.2.6, §21.4.1).
                message = parse_complete(env.data, datagram=env.transport == "UDP")
            except ParseError as error:
                self.stats["parse_error"] += 1
                answer = reject_malformed(env.data, error, server=SERVER)
                if answer is not None:
                    self.stats["answered_malformed"] += 1
                    self.send_raw(env.edge, env.transport, env.peer, env.local, env.conn, answer)
                return
            self.sip_counts.count(message, self.sip_counts.requests_in, self.sip_counts.responses_in)
            if self.sip_log.active:
                self.sip_log.record("in", message, env.data, env.transport, env.peer)
            token = CALL_ID.set(message.call_id)
            try:
                tracing = self.tracing
                span = None if tracing is None else tracing.worker_receive(message, env)
                if span is None or tracing is None:
                    # What this message makes us send belongs to the same
                    # unsampled call: no need to ask the tracer again.
                    self._untraced = tracing is not None
                    self._process(message, env, now)
                else:
                    with tracing.use(span):
                        self._process(message, env, now)
            finally:
                CALL_ID.reset(token)
        except Exception:  # noqa: BLE001
            # One message must not stop the link loop that feeds every other
            # one (the parser's and the tracer's bugs included).
            self._bug("message handling failed")
        finally:
            self._origin_ns = 0
            self._untraced = False
            self.processing_latency.observe_ns(time.time_ns() - received)

    def _process(self, message: Request | Response, env: Envelope, now: float) -> None:
        try:
            source = Peer(env.transport, env.peer[0], env.peer[1],
                          EdgeRoute(env.edge, env.conn, env.local, env.advertise))
            self._execute(self.tu.receive(message, source, now), now)  # type: ignore[union-attr]
        except Exception:  # noqa: BLE001 - the worker must survive any bug in a handler
            self._bug("request processing failed", message.call_id)
            answer = answer_internal_error(message, server=SERVER)
            if answer is not None:
                self.send_raw(env.edge, env.transport, env.peer, env.local, env.conn, answer)

    def _execute(self, outputs: list, now: float) -> None:
        """Carry out the TU's outputs in order: sends, registrations."""
        for output in outputs:
            if type(output) is Send:
                self._send(output, now)
            else:
                assert self._nursery is not None
                # The task inherits this context: the call's span and Call-ID for logs.
                self._nursery.start_soon(self._register, output.request, output.source, self._origin_ns)

    # -- registrar --------------------------------------------------------------------

    async def _register(self, request: Request, source: Peer, origin_ns: int = 0) -> None:
        from cluster.registrar import Outcome, Source, failure, register
        route = route_of(source)
        tracing = self.tracing
        scope = tracing.child("registrar.register", {"sip.aor": str(request.to.uri)}) \
            if tracing is not None else nullcontext()
        with scope as span:
            try:
                result = await register(
                    # location_store is set in run(), before any REGISTER arrives.
                    self.location_store, request,  # type: ignore[arg-type]
                    now=time.time(), policy=self.policy,
                    source=Source(source.transport, source.host, source.port),
                    edge=route.edge if route else None, conn=route.conn if route else None)
            except Exception:  # noqa: BLE001
                # This task runs in the worker's nursery: an exception escaping
                # it would stop the worker. A registrar bug costs this
                # REGISTER a 500, as in the message path.
                self._bug("registration failed", request.call_id)
                result = failure(Outcome.INTERNAL_ERROR, policy=self.policy)
            if result.outcome is Outcome.STORE_UNAVAILABLE:
                log.warning("REGISTER answered 503: %s", result.detail)
            self.stats[f"register_{result.status}"] += 1
            if span is not None:
                span.set_attribute("sip.response.status_code", result.status)
            self._origin_ns = origin_ns
            try:
                now = trio.current_time()
                self._execute(self.tu.respond(result.response(request), now), now)  # type: ignore[union-attr]
            finally:
                self._origin_ns = 0
            self.kick_timers()

    # -- sending ------------------------------------------------------------------------

    def _send(self, send: Send, now: float) -> None:
        message, dest = send.message, send.destination
        route = route_of(dest)
        # "" like None names no edge we know.
        edge = (route.edge if route is not None else None) or ""
        if edge not in self.edges and (route is None or route.local == NO_LOCAL):
            # A route the TU made names no edge, or one that left: any
            # linked edge reaches the peer.
            edge = next(iter(self.edges), None) or ""
        counts = self.sip_counts
        counts.count(message, counts.requests_out, counts.responses_out)
        data = message.to_bytes()
        if self.sip_log.active:
            self.sip_log.record("out", message, data, dest.transport, (dest.host, dest.port))
        tracing = self.tracing
        trace = None if tracing is None or self._untraced else tracing.outbound(message)
        key = send.key
        if not self.send_raw(edge, dest.transport, (dest.host, dest.port),
                             route.local if route is not None else NO_LOCAL,
                             route.conn if route is not None else None, data, trace, key) and key is not None:
            self._execute(self.tu.transport_error(key, now), now)  # type: ignore[union-attr]

    def send_raw(self, edge: str, transport: str, peer: tuple[str, int], local: tuple[str, int],
                 conn: int | None, data: bytes, trace: str | None = None, key=None) -> bool:
        """Hand one message to ``edge``. False when it cannot go now (the
        caller reports a transport error). While framing, a message for an
        edge that reads frames is queued and True returned: a failure then
        surfaces in flush_frames, which reports ``key``'s transport error."""
        endpoint = self.edges.get(edge)
        if endpoint is None:
            self.stats["drop_unknown_edge"] += 1
            return False
        env = Envelope("out", edge, transport, peer, local, data, conn, self._origin_ns, trace,
                       sender=self.node_id)
        if edge in self.array_edges:
            if self._framing:
                self._frames.add(endpoint, env, key)
                return True
            frame = pack_v2(env)
        else:
            frame = pack(env)
        if self.outbox.send(endpoint, frame):
            self.stats["sent"] += 1
            return True
        self.stats["drop_edge_link_down"] += 1
        return False

    def flush_frames(self, now: float) -> None:
        """Send what framing queued: one frame per edge. Messages an edge
        link refuses count as dropped, and their client transactions get a
        transport error (§17.1.4), whose own messages are sent here too."""
        while self._frames:
            for endpoint, frame, keys in self._frames.take():
                if self.outbox.send(endpoint, frame):
                    self.stats["sent"] += len(keys)
                    self.stats["sent_frames"] += 1
                    continue
                self.stats["drop_edge_link_down"] += len(keys)
                for key in keys:
                    if key is not None:
                        self._execute(self.tu.transport_error(key, now), now)  # type: ignore[union-attr]

    def status(self) -> dict:
        ready, why = self.readiness()
        return {
            "id": self.node_id, "role": WORKER, "pid": os.getpid(),
            "ready": ready, "ready_reason": why,
            "http": self.http_url, "metrics": f"{self.http_url}/metrics" if self.http_url else None,
            "draining": self.draining,
            "transactions": len(self.transactions),
            "location_revision": self.locations.revision if self.locations is not None else None,
            "proxy_contexts": len(self.tu.contexts) if self.tu is not None else 0,
            "edges": sorted(self.edges),
            "stats": dict(self.stats),
            "link_auth_failures": dict(self.link_guard.failures),
        }


class SipCounts:
    """Requests by method and responses by code, in and out (read by the metrics)."""

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


def _password_guard(config: Config, node_id: str, stats: Counter[str]) -> PasswordGuard | None:
    """``worker.auth_fail_*`` as a ``PasswordGuard``; None when turned off."""
    from cluster.defence import AuthFailures, BanTable
    from cluster.defence.store import BanPublisher
    from nodes.worker.defence import PasswordGuard
    w = config.worker
    if w.auth_fail_limit <= 0:
        return None
    failures = AuthFailures(limit=w.auth_fail_limit, window=w.auth_fail_window, ban_time=w.auth_ban_time)
    return PasswordGuard(failures, BanTable(USER_BANS), node_id, stats,
                         BanPublisher(config.cluster.prefix, stats))
