"""The worker shard's runtime: the I/O adapter of its transaction user.

One trio process per core (DESIGN §5). The SIP decisions live in the sans-IO ``cluster.tu.TransactionUser``;
this module feeds it envelopes and time and carries out what it returns: sends through the edges (``link``),
registrations (an etcd task, ``registrations``) and DNS locations (tasks, ``resolver``). Inbound envelopes
are parsed once, at the one parse-error boundary: a request that fails is answered 400 with the reason
(RFC 3261 §8.2.6); a broken response is dropped and counted. Start-up wiring is ``wiring``; membership and
readiness, ``standing``; the deadline task, ``timer``; counting for metrics and ``/status``, ``metrics``.
An outbound envelope copies the ``ts_ns`` of the inbound one being processed, so the edge measures edge →
worker → edge on its own clock.
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
from cluster.link import READS as LINK_READS, Envelope, Inbox, LinkAuthenticator, LinkGuard, Outbox, node_context, node_keys
from cluster.logs import CALL_ID
from cluster.observability.etcd import EtcdMetrics
from cluster.observability.node_metrics import hop_latency
from cluster.observability.sip_logging import SipLogSelection, follow_selection
from cluster.observability.tracing import RouteSpans, Tracing
from cluster.observability.transactions import TransactionCounts
from cluster.sharding.membership import EDGE, WORKER, Member, MembershipView
from cluster.sip import ParseError, Request, Response, answer_internal_error, parse_complete, reject_malformed
from cluster.sip.transaction import TransactionLayer
from cluster.sip.transaction.actions import Send
from cluster.sip.transaction.peer import Peer
from cluster.sip.transaction.timers import TimerConfig
from cluster.tu import EdgeRoute, TransactionUser, route_of
from cluster.tu.outputs import NO_LOCAL, Resolve

from .application import apply_redirect_domains, load_application
from .overload import LINK_HWM, WorkerAdmission
from .link import EdgeLinks, Failed, LinkReader
from .metrics import SipCounts, worker_status
from .registrations import Registrations
from .resolver import WorkerDns
from .services import Services
from .standing import ShardStanding
from .timer import TimerTask
from .wiring import WorkerStores, cluster_route, password_guard, sweep_challenges

log = logging.getLogger("sipcluster.worker")

SERVER = "sipcluster-worker"


class WorkerNode:
    role = WORKER

    def __init__(self, config: Config, application=None, *, services=None,
                 tracing: Tracing | None = None, collector=None) -> None:
        """``services`` starts the transaction user at once (tests; ``run``
        builds them otherwise); ``tracing`` when tracing is on; ``collector``,
        the garbage collector policy the node runs under (``nodes.collector``),
        for its metrics."""
        self.config = config
        w = config.worker
        self.node_id = config.cluster.node_id
        self.context = node_context()  # its own: the ZAP handler is per context (cluster.link)
        self.keys = node_keys(config.cluster.link_secret_dir)
        # Only edges write to a worker's link: the ``in`` envelopes whose
        # source address the worker believes (§18.2.1 received/rport,
        # registrar bindings, trusted networks).
        self.link_guard = LinkGuard(accept=(EDGE,))
        self.authenticator = LinkAuthenticator(self.context, self.link_guard)
        self.inbox = Inbox(self.context, w.link, hwm=LINK_HWM, keys=self.keys)  # short: nodes.worker.overload
        self.authenticator.watch(self.inbox)
        self.stats: Counter[str] = Counter()
        self.links = EdgeLinks(Outbox(self.context, keys=self.keys), self.node_id, self.stats)
        self.admission = WorkerAdmission(w.overload_lag, self.stats, SERVER, self.links)
        self.reader = LinkReader(self.inbox, self.links, self.stats, receive=self.receive,
                                 failed=self._failed, done=self._rest)
        self.transaction_counts = TransactionCounts()
        self.transactions = TransactionLayer(TimerConfig(t1=w.t1, t2=w.t2, t4=w.t4),
                                             observer=self.transaction_counts)
        self.timer = TimerTask(self._next_deadline, self.on_timers)
        self.application = application or load_application(w.app, self.node_id)
        self.tracing = tracing
        self.standing = ShardStanding(self.node_id, self._on_view, drain_timeout=w.drain_timeout)
        self.http_url = ""
        self.stores: WorkerStores | None = None
        self.registrations: Registrations | None = None
        self.password_guard = password_guard(config, self.node_id, self.stats)
        self.dns = WorkerDns(config.dns, self.stats, kick=self.timer.kick, tracing=tracing)
        # Set once its services exist (``run``, or ``services`` here), before any
        # message or timer is handled: why its uses are marked for the type checker.
        self.tu: TransactionUser | None = None
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
        self._origin_ns = 0
        self._untraced = False

    def member(self) -> Member:
        return Member(id=self.node_id, role=WORKER, link=self.inbox.endpoint, http=self.http_url,
                      pid=os.getpid(), host=socket.gethostname(), started=time.time(),
                      link_version=LINK_READS, curve_key=self.keys.public.decode())

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        c = self.config
        stores = self.stores = WorkerStores(c, self.etcd_metrics, self.tracing, (self.standing, self.links, self.timer.kick))
        services = await stores.services(self.stats, self.password_guard)
        self.registrations = stores.registrations(self.stats, self.tracing, self._bug, services.flows)
        self._start_tu(services)
        apply_redirect_domains(self.application, c)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.authenticator.run)
            await stores.start(nursery, self.password_guard, self.stats)
            await nursery.start(self.standing.run, EtcdMembership.from_config(
                c, self.member(), observer=self.etcd_metrics.client("membership")))
            nursery.start_soon(follow_selection, stores.kv, c.cluster.prefix, self.sip_log)
            nursery.start_soon(self.reader.run)
            nursery.start_soon(self.timer.run)
            nursery.start_soon(sweep_challenges, services, self._bug)
            log.info("worker ready", extra={"node": self.node_id, "link": self.inbox.endpoint})
            task_status.started()

    def _start_tu(self, services: Services) -> None:
        observer = None if self.tracing is None else RouteSpans(self.tracing, self.application.name)  # decisions as spans
        self.tu = TransactionUser(self.application, self.transactions, services, shard=self.node_id,
                                  salt=self.config.cluster.prefix, stats=self.stats, observer=observer,
                                  blocklist=self.dns.blocklist, record_route=cluster_route(self.config))

    def _on_view(self, view: MembershipView) -> None:
        self.link_guard.update(view.members.values())
        self.tu.learn_edges(self.links.follow(view.edges()))  # type: ignore[union-attr]
        if self.password_guard is not None:
            # Each worker counts the failures it sees (cluster.defence.guessing).
            self.password_guard.failures.workers = len(view.workers())

    @property
    def view(self) -> MembershipView | None:
        return self.standing.view

    def readiness(self) -> tuple[bool, str]:
        return self.standing.readiness()

    def in_flight(self) -> int:
        """Transactions still waiting for a final response, and proxied calls."""
        return self.transactions.pending() if self.tu is None else self.tu.in_flight()

    async def drain(self) -> None:
        """SIGTERM: leave the ring, finish in-flight transactions (bounded by
        the drain timeout, Timer B/F = 32 s by default), then return."""
        await self.standing.drain(self.in_flight)

    # -- timers and sending, the link's side of the TU ----------------------------------

    def _next_deadline(self) -> float | None:
        return self.transactions.next_deadline() if self.tu is None else self.tu.next_deadline()

    def on_timers(self, now: float) -> None:
        """Run the TU's due timers and DNS answers, and send what they produce."""
        if (tu := self.tu) is None:
            return
        with self.links.framed(self._failed(now)):
            self.dns.answer(tu, self._execute, now, self._bug)  # each in the trace context of its request
            # Fired timers are popped before they run, so a bug met by one
            # costs its actions, not the loop (which would stop the worker)
            # and not the timers after it.
            for fire in (tu.transaction_timers, tu.proxy_timers):
                try:
                    self._execute(fire(now), now)
                except Exception:  # noqa: BLE001 - a bug costs this tick, not the worker
                    self._bug("timer handling failed")
        self.transactions.rest()

    def _failed(self, now: float) -> Failed:
        """A message the links refused: a transport error that blocks no destination (§17.1.4)."""
        return lambda key: self._execute(self.tu.link_refused(key, now), now)  # type: ignore[union-attr]

    def _rest(self) -> None:
        self.transactions.rest()
        self.timer.kick()

    def _bug(self, what: str, call_id: str | None = None) -> None:
        """A bug met while handling one message or timer: logged with its
        traceback (call from an ``except`` block) and counted; the caller
        goes on (alert SipclusterInternalErrors)."""
        log.exception(what, extra={} if call_id is None else {"call_id": call_id})
        self.stats["internal_error"] += 1

    # -- message path --------------------------------------------------------------

    def receive(self, env: Envelope, now: float) -> None:
        received = time.time_ns()
        if env.ts_ns:
            self.link_latency.observe_ns(received - env.ts_ns)
        self._origin_ns = env.ts_ns
        try:
            if not (self.standing.admits(env, self.stats) and self.admission.admit(env, now)):
                return
            try:
                # The one parse-error boundary (§8.2.6, §21.4.1): a request failing
                # a check of any field a later layer reads is answered 400 with the reason.
                message = parse_complete(env.data, datagram=env.transport == "UDP")
            except ParseError as error:
                self.stats["parse_error"] += 1
                answer = reject_malformed(env.data, error, server=SERVER)
                if answer is not None:
                    self.stats["answered_malformed"] += 1
                    self.links.send(env.edge, env.transport, env.peer, env.local, env.conn, answer, env.ts_ns)
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
                self.links.send(env.edge, env.transport, env.peer, env.local, env.conn, answer, env.ts_ns)

    def _execute(self, outputs: list, now: float) -> None:
        """Carry out the TU's outputs in order: sends, DNS locations, registrations."""
        for output in outputs:
            if type(output) is Send:
                self._send(output, now)
            elif type(output) is Resolve:  # a task; its location comes back through the timer task
                self.dns.start(self._nursery, output, self.tu)
            else:  # a task that inherits this context: the call's span and Call-ID for logs
                self._nursery.start_soon(self._register, output.request, output.source, self._origin_ns)  # type: ignore[union-attr]

    async def _register(self, request: Request, source: Peer, origin_ns: int = 0) -> None:
        def answer(response: Response) -> None:
            self._origin_ns = origin_ns
            try:
                now = trio.current_time()
                self._execute(self.tu.respond(response, now), now)  # type: ignore[union-attr]
            finally:
                self._origin_ns = 0

        await self.registrations.register(request, source, answer)  # type: ignore[union-attr]
        self.timer.kick()

    def _send(self, send: Send, now: float) -> None:
        message, dest = send.message, send.destination
        route = route_of(dest)
        counts = self.sip_counts
        counts.count(message, counts.requests_out, counts.responses_out)
        data = message.to_bytes()
        if self.sip_log.active:
            self.sip_log.record("out", message, data, dest.transport, (dest.host, dest.port))
        tracing = self.tracing
        trace = None if tracing is None or self._untraced else tracing.outbound(message)
        local, conn, flow = (route.local, route.conn, route.flow) if route is not None else (NO_LOCAL, None, False)
        if not self.links.send(self.links.edge_for(route), dest.transport, (dest.host, dest.port), local, conn,
                               data, self._origin_ns, trace, send.key, flow) and send.key is not None:
            self._failed(now)(send.key)

    def status(self) -> dict:
        return worker_status(self)
