"""The transaction user of a worker shard, sans-IO (RFC 3261 §16, §10.3, §22).

It sits on the transaction layer the way aioquic's connection sits under its
protocol: the worker feeds it inputs — a message parsed from the wire, a
registrar's response, a failed send, the time — and carries out the list of
outputs each call returns, in order:

    out = tu.receive(message, source, now)   # a message from an edge
    out = tu.respond(response, now)          # the registrar's answer
    out = tu.transport_error(key, now)       # a Send for ``key`` failed
    out = tu.handle_timer(now)               # at tu.next_deadline()
    out = tu.resolved(ticket, location, now) # the DNS answer to a Resolve

Outputs are the transaction layer's ``Send`` (its destination's context is an
``EdgeRoute``), ``StartRegistration`` and ``Resolve``: a next hop named by a
host name is located by the runtime's DNS (RFC 3263), and the branch, ACK or
CANCEL waiting for it goes on when ``resolved`` brings the answer; a branch
fails over to the next destination on a 503, a transport error or a timeout
(§4.3, ``cluster.proxy.failover``). The TU checks requests (§16.3),
asks the application for a decision and carries it out: replies, digest
challenges (§22), registrations, stateful proxying with forking, CANCEL and
the application's failure hook (§16.5–§16.10, the response contexts of
``cluster.proxy.context``), stateless forwarding of ACKs for 2xx and of stray
responses (§16.11). It reads no clock and does no I/O; ``services`` (location
and user caches, nonces, dialog tokens) answers from memory.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import logging
from collections import Counter
from collections.abc import Callable
from typing import Protocol

from cluster.app.api import (
    Application, Call, Challenge, Decision, Handler, Proxy, Register, Reply, Target,
)
from cluster.dispatch import Dispatcher
from cluster.dns.blocklist import Blocklist
from cluster.dns.rfc3263 import Destination, Location
from cluster.dns.rfc3263 import Target as LocateTarget
from cluster.proxy import identity
from cluster.proxy.failover import (
    FAILOVER_STATUSES, Attempts, blocked_failure, location_failure, seed_for, warning,
)
from cluster.proxy.flows import Flow, FlowTokens, ForgedFlowToken, dialog_flow, route_flow
from cluster.proxy.context import (
    Branch, Cancel, Exhausted, Forward, Output as ContextOutput, ResponseContext, Upstream,
)
from cluster.proxy.routing import (
    DEFAULT_PORTS, DialogTokens, LocalAddresses, RoutingError, forward_copy, hop_for,
    SHARD_PARAM, loop_detected, next_hop, next_hop_uri, preprocess_routes, proxy_via, record_route_set,
    resolve_localhost,
)
from cluster.sip import URI, ParseError, Request, Response, SipURI, TelURI, make_response, parse_uri
from cluster.sip.transaction.actions import (
    AckReceived, Action, CancelReceived, RequestReceived, ResponseReceived, Send, StrayResponse,
    TransactionKey, TransactionTerminated, TransactionTimeout, TransportError,
)
from cluster.sip.transaction.layer import TransactionLayer
from cluster.sip.transaction.peer import Peer
from cluster.sip.transaction.stateless import forward_response_statelessly

from . import dispatching
from .flowroutes import arrival_flow, flow_peer, forged_flow
from .locating import Located, Locating, LogLimit
from .outputs import NO_LOCAL, EdgeRoute, Resolve, StartRegistration, route_of

log = logging.getLogger("sipcluster.worker")

# Option tags this proxy understands in Proxy-Require (§16.3 step 5) and, as a
# registrar, in Require (§8.2.2.3).
SUPPORTED = frozenset({"path", "outbound"})
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, MESSAGE, INFO, UPDATE, PRACK, SUBSCRIBE, NOTIFY, REFER"
# The counter name of each action type, built once rather than per action.
_STAT_NAMES: dict[type, str] = {}

Output = Send | StartRegistration | Resolve
Resolver = Callable[[str], str | None]
Headers = tuple[tuple[str, str], ...]


class TUServices(Protocol):
    """What the TU asks of the worker's services (``nodes.worker.services``):
    answers from memory, no I/O."""

    @property
    def local(self) -> LocalAddresses: ...

    @property
    def tokens(self) -> DialogTokens: ...

    @property
    def flows(self) -> FlowTokens: ...

    @property
    def dispatcher(self) -> Dispatcher | None: ...

    def is_trusted(self, host: str) -> bool: ...

    def learn_advertise(self, advertise: str | None) -> None: ...

    def learn_edges(self, addresses: dict[str, dict[str, str]]) -> None: ...

    def advertised(self, edge: str | None, transport: str) -> str | None: ...

    def challenge(self, request: Request, decision: Challenge, source: str = "") -> Response: ...

    def note(self, event: str, request: Request, source: str, detail: str) -> None: ...


class TUObserver:
    """Hooks for observability, passed at construction (nothing patches the TU).
    ``handler`` may wrap the application's handler for one request (a tracing
    span around the routing decision); the default returns it unchanged."""

    def handler(self, key: str, handler: Handler, call: Call) -> Handler:
        return handler


class TransactionUser:
    """``application`` decides; ``transactions`` is the worker's transaction
    layer; ``services`` answers the application's questions from memory;
    ``shard`` names this worker (our Via's ``wk``), ``salt`` keeps branches
    of different clusters apart; ``stats`` counts events (the worker's node
    events); ``resolve`` maps a host name to an address without DNS
    (``localhost``), other names are located by the runtime (``Resolve``);
    ``blocklist`` holds the destinations that did not answer (RFC 3263 §4.3);
    ``record_route`` names the whole cluster in Record-Route instead of the
    receiving edge (``cluster.record_route``)."""

    def __init__(self, application: Application, transactions: TransactionLayer,
                 services: TUServices, *, shard: str, salt: str = "",
                 stats: Counter[str] | None = None, resolve: Resolver = resolve_localhost,
                 observer: TUObserver | None = None, blocklist: Blocklist | None = None,
                 record_route: str | None = None) -> None:
        self.application = application
        self.cluster_route = record_route
        if record_route:
            # A Route naming the cluster is ours (§16.4), whichever edge it reaches.
            services.learn_advertise(record_route)
        self.transactions = transactions
        self.services = services
        self.shard = shard
        self.salt = salt
        self.stats: Counter[str] = stats if stats is not None else Counter()
        self.resolve = resolve
        self.observer = observer
        self.dispatcher = services.dispatcher
        """Destination sets (``SetTarget``) and their probes, when the worker follows them."""
        self.probes: dict[TransactionKey, tuple[tuple[str, str], int]] = {}  # client key -> (member, probe)
        self.blocklist = blocklist if blocklist is not None else Blocklist(60.0)
        self.locating = Locating(self.blocklist, self.stats)
        self._unroutable_log = LogLimit(1.0)
        self.contexts: dict[TransactionKey, ResponseContext] = {}  # server key -> context
        self.branches: dict[TransactionKey, tuple[ResponseContext, Branch]] = {}  # client key -> (ctx, branch)
        self.calls: dict[int, Call] = {}
        self.targets: dict[int, dict[int, Target]] = {}  # id(ctx) -> branch index -> target
        self.record_route: dict[int, bool] = {}
        self._deadlines: list[tuple[float, int, ResponseContext]] = []
        self._seq = itertools.count()
        self._out: list[Output] = []

    # -- inputs ------------------------------------------------------------------------

    def receive(self, message: Request | Response, source: Peer, now: float) -> list[Output]:
        """A message from an edge, parsed and checked (``parse_complete``)."""
        out: list[Output] = []
        self._out = out
        route = route_of(source)
        if route is not None and route.advertise:
            self.services.learn_advertise(route.advertise)
        if type(message) is Request:
            note_source(message, source)
        self._perform(self.transactions.receive(message, source, now), now)
        return out

    def learn_edges(self, addresses: dict[str, dict[str, str]]) -> None:
        """Each edge's advertised address per transport (its membership
        record): a request leaving over a transport names that transport's
        address in our Via and Record-Route (RFC 5658)."""
        self.services.learn_edges(addresses)

    def respond(self, response: Response, now: float) -> list[Output]:
        """A response the TU's driver made (the registrar's)."""
        out: list[Output] = []
        self._out = out
        self._respond(response, now)
        return out

    def transport_error(self, key: TransactionKey, now: float) -> list[Output]:
        """A ``Send`` for transaction ``key`` could not go (§17.1.4, §17.2.4)."""
        out: list[Output] = []
        self._out = out
        self._perform(self.transactions.transport_error(key, now), now)
        return out

    def resolved(self, ticket: int, location: Location, now: float) -> list[Output]:
        """The runtime located the target of ``Resolve(ticket)``: the branch,
        ACK or CANCEL that waited goes on (or fails, with a Warning)."""
        out: list[Output] = []
        self._out = out
        self.locating.answer(ticket, location, now)
        return out

    def handle_timer(self, now: float) -> list[Output]:
        """Both kinds of timer due at ``now``."""
        out = self.transaction_timers(now)
        out.extend(self.proxy_timers(now))
        return out

    def transaction_timers(self, now: float) -> list[Output]:
        """The transaction layer's timers due at ``now`` (§17 A–K)."""
        out: list[Output] = []
        self._out = out
        self._perform(self.transactions.handle_timer(now), now)
        return out

    def proxy_timers(self, now: float) -> list[Output]:
        """DNS answers delivered (``Locating.deliver``), then per-branch
        timeouts and Timer C of the response contexts due at ``now`` (§16.8)."""
        out: list[Output] = []
        self._out = out
        if self.dispatcher is not None:
            self.dispatcher.active.sweep(now)
            self._probe(now)
        self.locating.answer_delivered(now)
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            _, _, ctx = heapq.heappop(deadlines)
            if not ctx.finished:
                self._run(ctx, ctx.on_deadline(now), now)
        return out

    def next_deadline(self) -> float | None:
        """When ``handle_timer`` must next run (the transaction layer's or a
        response context's, whichever is first; at once when DNS answers were
        delivered); None when nothing waits."""
        if self.locating.delivered:
            return float("-inf")
        ours = self._proxy_deadline()
        dispatcher = self.dispatcher
        if dispatcher is not None and dispatcher.schedule is not None and dispatcher.probe_via is not None:
            probes = dispatcher.schedule.next_deadline()
            if probes is not None and (ours is None or probes < ours):
                ours = probes
        layer = self.transactions.next_deadline()
        if ours is None:
            return layer
        return ours if layer is None or ours < layer else layer

    def in_flight(self) -> int:
        """Proxied requests and transactions still owing a final response."""
        return len(self.contexts) + self.transactions.pending() + len(self.locating)

    # -- transaction layer events --------------------------------------------------------

    def _perform(self, actions: list[Action], now: float) -> None:
        out = self._out
        stats = self.stats
        for action in actions:
            # type(action) each time, not once: the checker narrows only that.
            if type(action) is Send:
                out.append(action)
            elif type(action) is RequestReceived:
                self._on_request(action.key, action.request, action.source, now)
            elif type(action) is ResponseReceived:
                self._on_response(action.key, action.response, now)
            elif type(action) is CancelReceived:
                self._on_cancel(action, now)
            elif type(action) is AckReceived:
                self._forward_ack(action.request, action.source)
            elif type(action) is StrayResponse:
                self._forward_stray(action.response, action.source)
            elif type(action) is TransactionTimeout:
                self._on_client_failure(action.key, now, timer=action.timer)
            elif type(action) is TransportError:
                self._on_client_failure(action.key, now, timer="transport")
            elif type(action) is TransactionTerminated:
                self.branches.pop(action.key, None)
                self.probes.pop(action.key, None)
            kind = type(action)
            name = _STAT_NAMES.get(kind)
            if name is None:
                name = _STAT_NAMES[kind] = f"tu_{kind.__name__}"
            stats[name] += 1

    def _respond(self, response: Response, now: float) -> None:
        self._perform(self.transactions.send_response(response, now), now)

    def _reply(self, request: Request, status: int, now: float, reason: str | None = None,
               headers: Headers = (), body: bytes = b"") -> None:
        self._respond(make_response(request, status, reason, headers=headers, body=body), now)

    # -- requests --------------------------------------------------------------------------

    def _on_request(self, key: TransactionKey, request: Request, source: Peer, now: float) -> None:
        if request.method == "BYE" and self.dispatcher is not None:
            # The end of a call counted against a set member (least-calls).
            self.dispatcher.active.end_call(request.call_id)
        status, headers, routed = self.check(request)
        if status:
            self._reply(request, status, now, headers=headers)
            return
        services = self.services
        if not services.is_trusted(source.host):
            identity.strip_untrusted(request)  # RFC 3325 §5: an unproved claim
        handler_name, handler = self.application.handler_for(request.method)
        if handler is None:
            self._reply(request, 501, now, headers=(("Allow", ALLOW),))
            return
        call = Call(request, source, services, self.shard, handler_name, routed)
        if self.observer is not None:
            handler = self.observer.handler(handler_name, handler, call)
        self._execute(key, call, handler(call), now)

    def check(self, request: Request) -> tuple[int, Headers, tuple[SipURI, ...]]:
        """§16.3 request validation (and the registrar's §8.2.2 checks): the
        status to answer (0: none) with its headers, and our own Route
        entries removed (``preprocess_routes``)."""
        uri = request.uri
        if not isinstance(uri, (SipURI, TelURI)):
            return 416, (), ()  # RFC 4475 unkscm / novelsc
        unknown = [tag for tag in request.proxy_require if tag.lower() not in SUPPORTED]
        if request.method == "REGISTER":
            unknown += [tag for tag in request.require if tag.lower() not in SUPPORTED]
        if unknown:
            return 420, (("Unsupported", ", ".join(unknown)),), ()  # RFC 4475 bext01
        local = self.services.local
        routed = preprocess_routes(request, local)
        if routed and forged_flow(routed, self.services.flows):
            # RFC 5626 §5.3: a flow token that does not verify is refused.
            self.stats["flow_token_forged"] += 1
            return 403, (("Warning", '399 sipcluster "forged flow token"'),), routed
        mf = request.max_forwards
        if mf is not None and mf <= 0 and not (request.method == "OPTIONS" and local.is_us(request.uri)):
            return 483, (), routed  # §16.3 step 3 (RFC 4475 zeromf)
        if request.method != "REGISTER" and _may_have_looped(request, local) \
                and loop_detected(request, local):
            log.info("request looped back to the cluster (482)",
                     extra={"method": request.method, "routes_removed": len(routed)})
            return 482, (), routed
        return 0, (), routed

    def _execute(self, key: TransactionKey, call: Call, decision: Decision | None,
                 now: float) -> None:
        request = call.request
        if decision is None:
            return
        if isinstance(decision, Reply):
            self._reply(request, decision.status, now, decision.reason, decision.headers, decision.body)
        elif isinstance(decision, Challenge):
            self._respond(self.services.challenge(request, decision, call.source.host), now)
        elif isinstance(decision, Register):
            self._out.append(StartRegistration(request, call.source))
        elif isinstance(decision, Proxy):
            self._proxy(key, call, decision, now)
        else:
            raise TypeError(f"unknown decision {decision!r}")

    # -- proxying (§16) ----------------------------------------------------------------------

    def _proxy(self, key: TransactionKey, call: Call, decision: Proxy, now: float) -> None:
        ctx = self.contexts.get(key)
        if ctx is None:
            ctx = ResponseContext(key, call.request, timer_c=self.transactions.config.c)
            self.contexts[key] = ctx
            self.calls[id(ctx)] = call
            self.targets[id(ctx)] = {}
            self.record_route[id(ctx)] = decision.record_route
        slots, empty = dispatching.expand(self.dispatcher, decision.targets, call.request, self.stats)
        if not slots:
            if ctx.branches:
                self._run(ctx, ctx.finish(), now)
                return
            # Only destination sets with nothing to try: no branch at all.
            self._drop_context(ctx)
            self._reply(call.request, 503, now, dispatching.NO_MEMBER_UP,
                        (dispatching.warning(self._advertise(route_of(call.source)), empty),))
            return
        chosen = [target for target, _ in slots]
        outputs = ctx.add_targets([slot for _, slot in slots], parallel=decision.parallel,
                                  timeout=decision.timeout, now=now)
        targets = self.targets[id(ctx)]
        pending = list(chosen)
        for output in outputs:
            if isinstance(output, Forward):
                targets[output.branch.index] = pending.pop(0) if pending else Target(output.branch.target)
        for t, branch in zip(chosen, ctx.branches[-len(chosen):]):
            targets.setdefault(branch.index, t)
        self._run(ctx, outputs, now)

    def _run(self, ctx: ResponseContext, outputs: list[ContextOutput], now: float) -> None:
        for output in outputs:
            if isinstance(output, Forward):
                self._forward_branch(ctx, output.branch, now)
            elif isinstance(output, Upstream):
                call = self.calls.get(id(ctx))
                hook = self.application.on_response
                if hook is not None and call is not None:
                    try:
                        hook(call, output.response)
                    except Exception:
                        log.exception("response hook failed")
                self._respond(output.response, now)
            elif isinstance(output, Cancel):
                self._cancel_branch(output.branch, now)
            elif isinstance(output, Exhausted):
                self._on_exhausted(ctx, output.best, now)
        if self.dispatcher is not None and ctx.is_invite:
            self._release_members(ctx)
        deadline = ctx.next_deadline()
        if deadline is not None and not ctx.finished:
            heapq.heappush(self._deadlines, (deadline, next(self._seq), ctx))
        if ctx.finished:
            self._drop_context(ctx)

    def _drop_context(self, ctx: ResponseContext) -> None:
        self.contexts.pop(ctx.server_key, None)
        for table in (self.calls, self.targets, self.record_route):
            table.pop(id(ctx), None)

    def _release_members(self, ctx: ResponseContext) -> None:
        """A set member's branch that ended without a 2xx no longer counts
        as an active call on it; one answered 2xx counts until the BYE."""
        assert self.dispatcher is not None
        for branch in ctx.branches:
            if branch.state == "done" and branch.extra.pop("active", None) is not None:
                response = branch.response
                if response is None or not 200 <= response.status < 300:
                    self.dispatcher.active.release(ctx.request.call_id, (branch.group or "", branch.label or ""))

    def _forward_branch(self, ctx: ResponseContext, branch: Branch, now: float) -> None:
        call = self.calls[id(ctx)]
        target: Target = self.targets[id(ctx)].get(branch.index) or Target(branch.target)
        advertise = self._advertise(route_of(call.source))
        salt = f"{self.salt}{branch.index}"
        flow = target.flow or self._routed_flow(call.routed, call.source)
        try:
            if flow is not None:
                # RFC 5626 §5.3: a flow is the one way to its UA, so no DNS
                # and no failover; a flow that is gone is _flow_failed's.
                peer = self._flow_peer(flow, branch.target, advertise)
            else:
                hop = self._hop(ctx.request, target, branch.target, advertise, salt)
        except RoutingError as error:
            # No way to the target (unusable URI): the branch fails with the
            # error's status (§16.7 step 6).
            self._branch_unroutable(ctx, branch, error.status, error.reason, now)
            return
        if flow is not None:
            if flow.strict:
                branch.extra["flow"] = True
            self._send_branch(ctx, branch, peer, salt, flow, now)
            return
        if isinstance(hop, Destination):
            branch.attempts = Attempts((hop,))
            self._next_attempt(ctx, branch, now)
            return
        request = ctx.request
        seed = seed_for(request.call_id, request.cseq.seq, hop.host)
        self._locate(hop, seed, lambda location, at: self._branch_located(ctx, branch, hop, location, at))

    def _locate(self, target: LocateTarget, seed: int, then: Located) -> None:
        self._out.append(self.locating.ask(target, seed, then))

    def _branch_located(self, ctx: ResponseContext, branch: Branch, target: LocateTarget,
                        location: Location, now: float) -> None:
        if branch.state == "done" or ctx.finished:
            # Timer C, the branch timeout or another branch's 2xx ended it meanwhile.
            self.stats["dns_answer_late"] += 1
            return
        if ctx.cancelled:
            branch.request = ctx.request
            self._run(ctx, ctx.on_failure(branch, 487, now), now)
            return
        if not location.destinations:
            self._branch_unroutable(ctx, branch, *location_failure(location, target.host), now)
            return
        attempts = branch.attempts = Attempts(location.destinations)
        if not self._next_attempt(ctx, branch, now):
            self._branch_unroutable(ctx, branch, *blocked_failure(target.host, attempts.skipped), now)

    def _branch_unroutable(self, ctx: ResponseContext, branch: Branch, status: int, why: str,
                           now: float) -> None:
        """No way to the branch's next hop: it fails with ``status`` and a
        Warning saying ``why`` (ops/guide/dns.md), logged and counted."""
        self.stats[f"unroutable_{status}"] += 1
        if self._unroutable_log.allow(str(status), now):
            log.warning("no route to a branch's next hop: answered %d, %s", status, why,
                        extra={"call_id": ctx.request.call_id})
        call = self.calls.get(id(ctx))
        advertise = self._advertise(route_of(call.source) if call is not None else None)
        branch.request = ctx.request
        self._run(ctx, ctx.on_failure(branch, status, now, (warning(advertise, why),)), now)

    def _next_attempt(self, ctx: ResponseContext, branch: Branch, now: float) -> bool:
        """Send ``branch`` to its next destination that is not blocked;
        False when none is left."""
        attempts = branch.attempts
        blocklist = self.blocklist
        destination = None if attempts is None else \
            attempts.take(lambda d: blocklist.blocked(d.key, now))
        if attempts is None or destination is None:
            return False
        call = self.calls[id(ctx)]
        target: Target = self.targets[id(ctx)].get(branch.index) or Target(branch.target)
        came = route_of(call.source)
        advertise = self._advertise(came)
        # The first attempt has the branch's own Via branch (§16.11: a shard
        # taking over derives the same one); each failover a new one (§4.3).
        salt = f"{self.salt}{branch.index}" + (f".{attempts.sent}" if attempts.sent > 1 else "")
        if attempts.sent > 1:
            branch.state = "trying"
        peer = Peer(destination.transport, destination.host, destination.port,
                    EdgeRoute(target.edge or (came.edge if came else None), target.conn, NO_LOCAL, advertise))
        self._send_branch(ctx, branch, peer, salt, None, now)
        return True

    def _send_branch(self, ctx: ResponseContext, branch: Branch, peer: Peer, salt: str,
                     flow: Flow | None, now: float) -> None:
        """Send ``branch``'s request to ``peer`` in a client transaction of
        its own; ``flow`` when it goes over the callee's RFC 5626 flow."""
        call = self.calls[id(ctx)]
        target: Target = self.targets[id(ctx)].get(branch.index) or Target(branch.target)
        advertise = self._advertise(route_of(call.source))
        transport, peer_host = peer.transport, peer.host
        # The address our edge has for the transport the request leaves
        # over: the callee answers there and finds us there in-dialog.
        onward = self._onward(peer, advertise)
        via = proxy_via(ctx.request, transport, onward, salt, shard=self.shard)
        # §16.6 step 4: the cluster's name when configured, so the dialog's
        # route set survives the loss of the edge that set it up (DESIGN §5).
        rr = self._record_route(call, self.cluster_route or advertise, self.cluster_route or onward,
                                transport, peer_host, flow) \
            if self.record_route[id(ctx)] else None
        request = forward_copy(ctx.request, branch.target, via=via, record_route=rr, path=target.path)
        identity.for_next_hop(request, self.services.is_trusted(peer_host))
        branch.request = request
        try:
            client_key, actions = self.transactions.send_request(request, peer, now)
        except ValueError:
            # The same branch again: a retransmission reaching a new owner is
            # forwarded statelessly with the branch the old owner used (§16.11).
            self._out.append(Send(request, peer))
            return
        branch.key = client_key
        if client_key is not None:
            self.branches[client_key] = (ctx, branch)
        if branch.group is not None and ctx.is_invite and self.dispatcher is not None:
            self.dispatcher.active.begin(request.call_id, (branch.group, branch.label or ""), now)
            branch.extra["active"] = True
        self._perform(actions, now)

    def _fail_over(self, ctx: ResponseContext, branch: Branch, key: TransactionKey, now: float, *,
                   unreachable: bool) -> bool:
        """RFC 3263 §4.3: the branch's destination failed (a 503, or
        ``unreachable``: a transport error or Timer B/F); move to the next
        one. False when the branch ends here instead."""
        attempts = branch.attempts
        if attempts is None:
            return False
        if unreachable and attempts.current is not None:
            self.blocklist.block(attempts.current.key, now)
        if not attempts.left or branch.state == "done" or branch.cancel_wanted \
                or ctx.cancelled or ctx.final_sent:
            return False
        if not self._next_attempt(ctx, branch, now):
            return False
        self.branches.pop(key, None)
        self.stats["dns_failover"] += 1
        return True

    def _onward(self, peer: Peer, advertise: str) -> str:
        """Our address for the transport ``peer`` is reached over, on the
        edge that reaches it; ``advertise`` when the edges publish none."""
        route = route_of(peer)
        return self.services.advertised(route.edge if route else None, peer.transport) or advertise

    def _record_route(self, call: Call, advertise: str, onward: str, transport: str, hop_host: str,
                      flow: Flow | None) -> tuple[str, ...]:
        """Our Record-Route entries (§16.6 step 4), with the flow tokens of
        the caller's and the callee's flows (RFC 5626 §5.3)."""
        source = call.source
        arrival = arrival_flow(source)
        inbound = dialog_flow(call.request, arrival) if arrival is not None else None
        flows = self.services.flows
        return record_route_set(
            advertise, source.transport, transport, self._dialog_token(call, hop_host),
            onward=onward,
            inbound_flow=flows.make(inbound) if inbound is not None else None,
            outbound_flow=flows.make(flow) if flow is not None else None)

    def _routed_flow(self, routed: tuple[SipURI, ...], source: Peer) -> Flow | None:
        """The flow named by our Route entries that the request did not come
        over (RFC 5626 §5.3); forged tokens were refused in ``check``."""
        if not routed:
            return None
        try:
            return route_flow(routed, self.services.flows, arrival_flow(source))
        except ForgedFlowToken:
            return None

    def _flow_peer(self, flow: Flow, uri: URI | None, advertise: str) -> Peer:
        contact = _contact_address(Target(uri), flow.transport, self.resolve) if uri is not None else None
        return flow_peer(flow, contact, advertise)

    @staticmethod
    def _over_flow(ctx: ResponseContext, branch: Branch) -> bool:
        """Whether ``branch`` went over a strict flow."""
        return bool(branch.extra.get("flow"))

    def _dialog_token(self, call: Call, hop_host: str) -> str | None:
        """The dialog token for our Record-Route (``DialogTokens``): open
        for a dialog set up by a trusted source or an identified sender,
        else scoped to the host the request goes to."""
        request = call.request
        tag = request.from_.tag
        if not tag:
            return None
        tokens = self.services.tokens
        open_ = call.identity is not None or call.from_trusted
        return tokens.make(request.call_id, tag, "" if open_ else tokens.scope_for(hop_host))

    def _cancel_branch(self, branch: Branch, now: float) -> None:
        """§9.1: CANCEL mirrors the request's Request-URI, Call-ID, To, From,
        CSeq number and top Via (same branch) and its Route set."""
        original = branch.request
        peer = self.transactions.peer_of(branch.key) if branch.key is not None else None
        if original is None or peer is None:
            return  # no client transaction to cancel
        cancel = Request("CANCEL", original.uri, [
            ("Via", str(original.via)),
            ("Max-Forwards", "70"),
            # A request we forwarded has From and To (the parser requires them).
            ("From", original.get("from") or ""),
            ("To", original.get("to") or ""),
            ("Call-ID", original.call_id),
            ("CSeq", f"{original.cseq.seq} CANCEL"),
        ])
        for route in original.get_all("route"):
            cancel.add("Route", route)
        try:
            _, actions = self.transactions.send_request(cancel, peer, now)
        except ValueError:
            return
        self._perform(actions, now)

    def _on_response(self, key: TransactionKey, response: Response, now: float) -> None:
        entry = self.branches.get(key)
        if entry is None:
            probe = self.probes.get(key)
            if probe is not None and response.status >= 200 and self.dispatcher is not None:
                del self.probes[key]
                self.dispatcher.probe_ended(probe[0], probe[1], response.status, now)
            return  # a response to our CANCEL, or to a context that is gone
        ctx, branch = entry
        if response.status == 430:
            # RFC 5626 §5.3, §11.5: the edge found the flow gone.
            self._flow_failed(ctx, branch, now)
            return
        if response.status in FAILOVER_STATUSES and self._fail_over(ctx, branch, key, now, unreachable=False):
            return
        self._run(ctx, ctx.on_response(branch, response, now), now)

    def _flow_failed(self, ctx: ResponseContext, branch: Branch, now: float) -> None:
        """A branch sent over a flow that is gone: RFC 5626 §5.3 has the
        authoritative proxy try the instance's next flow. Without one the
        branch counts as 480, as 430 means nothing beyond this proxy (§11.5)."""
        self.stats["flow_failed"] += 1
        targets = self.targets.get(id(ctx))
        target = targets.get(branch.index) if targets is not None else None
        status = 480
        if targets is not None and target is not None and target.alternates \
                and not ctx.cancelled and not ctx.final_sent:
            following = dataclasses.replace(target.alternates[0], alternates=target.alternates[1:])
            outputs = ctx.add_targets([following.uri], timeout=branch.timeout, now=now)
            for output in outputs:
                if isinstance(output, Forward):
                    targets[output.branch.index] = following
            self.stats["flow_next_tried"] += 1
            self._run(ctx, outputs, now)
            # The instance's answer is the next flow's: this branch's own
            # stands last in §16.7 step 6's choice (a 408 is the least informative).
            status = 408
        self._run(ctx, ctx.on_failure(branch, status, now), now)

    def _on_client_failure(self, key: TransactionKey, now: float, *, timer: str) -> None:
        entry = self.branches.get(key)
        if entry is None:
            probe = self.probes.pop(key, None)
            if probe is not None and self.dispatcher is not None:
                self.dispatcher.probe_ended(probe[0], probe[1], None, now)
            return
        ctx, branch = entry
        if timer == "C":
            self._run(ctx, ctx.on_deadline(float("inf")), now)
        elif timer == "transport" and self._over_flow(ctx, branch):
            self._flow_failed(ctx, branch, now)
        elif timer in ("B", "F", "transport") and self._fail_over(ctx, branch, key, now, unreachable=True):
            return
        else:
            self._run(ctx, ctx.on_timeout(branch, now), now)

    def _on_exhausted(self, ctx: ResponseContext, best: Response, now: float) -> None:
        hook = self.application.on_failure
        call = self.calls.get(id(ctx))
        decision = None
        if hook is not None and call is not None and not ctx.cancelled:
            try:
                decision = hook(call, best)
            except Exception:
                log.exception("failure hook failed")
        if isinstance(decision, Proxy) and decision.targets and call is not None:
            self._proxy(ctx.server_key, call, decision, now)
            return
        if isinstance(decision, Reply):
            ctx.final_sent = True
            self._reply(ctx.request, decision.status, now, decision.reason, decision.headers, decision.body)
            return
        self._run(ctx, ctx.finish(), now)

    def _on_cancel(self, action: CancelReceived, now: float) -> None:
        # §9.2 / §16.10: answer the CANCEL, then cancel the pending branches;
        # the callee's 487 comes back as the best response.
        if action.key is None:
            if not self._cancel_without_context(action.request, action.source, now):
                self._respond(make_response(action.request, 481), now)
            return
        self._respond(make_response(action.request, 200), now)
        ctx = self.contexts.get(action.key)
        if ctx is not None:
            self._run(ctx, ctx.cancel(), now)
            if not any(b.pending for b in ctx.branches) and not ctx.final_sent:
                ctx.final_sent = True
                self._respond(make_response(ctx.request, 487), now)
        elif self.transactions.state(action.key) == "Proceeding":
            request = self.transactions.request_of(action.key)
            if request is not None:
                self._respond(make_response(request, 487), now)

    def _hop(self, request: Request, target: Target, uri: URI | None, advertise: str,
             salt: str) -> Destination | LocateTarget:
        """The next hop towards ``target`` (§16.6 steps 6-7, RFC 3327 Path,
        RFC 5626 flows): its address, or the host name DNS must locate
        (RFC 3263); RoutingError when there is no way there."""
        if target.edge and target.received and not target.path:
            transport = (target.transport or "UDP").upper()
            peer_host, peer_port = target.received
            if transport != "UDP":
                # The edge writes on the registration's connection while
                # it is open; once it is closed the edge connects to this
                # address instead, which must be the Contact (a UA on TCP
                # listens there, RFC 3261 §18.2.2), not the closed
                # connection's ephemeral source port.
                peer_host, peer_port = _contact_address(
                    target, transport, self.resolve) or (peer_host, peer_port)
            return Destination(transport, peer_host, peer_port)
        if target.path:
            # RFC 3327 §5.3: the Path goes first in the route set; the
            # request as it will leave says where that is.
            probe = forward_copy(request, uri, via=proxy_via(request, "UDP", advertise, salt),
                                 record_route=None, path=target.path)
            hop_uri = next_hop_uri(probe)
        else:
            # Without building the request: the top Route, else the target.
            routes = request.routes
            hop_uri = routes[0].uri if routes else (uri if uri is not None else request.uri)
        hop = next_hop(hop_uri, resolve=self.resolve)
        return hop if isinstance(hop, LocateTarget) else Destination(hop.transport, hop.host, hop.port)

    def _cancel_without_context(self, cancel: Request, source: Peer, now: float) -> bool:
        """§16.10: a CANCEL with no response context here — its INVITE was
        handled by a shard that has since failed (the ring moved the call to
        us), or never reached us. The RFC has such a CANCEL forwarded on,
        not answered 481, so the callee stops ringing. It goes where routing
        sends the INVITE's branches, each with the branch it had: both derive
        from the same incoming transaction key and branch index (§16.11), so
        the next hop matches it to the INVITE (§9.2) whichever shard forwarded
        that. Every target gets one: the branches of a parallel fork all ring,
        and for a sequential one we cannot know which is live (a hop that
        never saw the INVITE answers 481, which ends there). As for any
        CANCEL (§16.10) it is answered 200 here and each copy is sent in a
        client transaction of its own (retransmitted over UDP; its response
        ends there). False when routing offers no target."""
        if self.check(cancel)[0]:
            return False
        handler_name, handler = self.application.handler_for(cancel.method)
        if handler is None:
            return False
        call = Call(cancel, source, self.services, self.shard, handler_name)
        decision = handler(call)
        if not isinstance(decision, Proxy) or not decision.targets:
            return False
        came = route_of(source)
        advertise = self._advertise(came)
        slots, _ = dispatching.expand(self.dispatcher, decision.targets, cancel, self.stats)
        # A set's first member in its order: where the INVITE went unless it
        # failed over (the hash policy gives every shard the same one).
        hops: list[tuple[int, Target, Destination | LocateTarget]] = []
        for index, (target, _) in enumerate(slots):
            try:
                hops.append((index, target, self._hop(cancel, target, target.uri, advertise,
                                                      f"{self.salt}{index}")))
            except RoutingError:
                continue  # an unroutable target: the INVITE never went there either
        if not hops:
            return False
        self._respond(make_response(cancel, 200), now)
        for index, target, hop in hops:
            def send(destination: Destination, at: float, index: int = index, target: Target = target) -> None:
                salt = f"{self.salt}{index}"
                via = proxy_via(cancel, destination.transport, advertise, salt, shard=self.shard)
                out = forward_copy(cancel, target.uri, via=via, record_route=None, path=target.path)
                route = EdgeRoute(target.edge or (came.edge if came else None), target.conn, NO_LOCAL, advertise)
                self.stats["cancel_without_context_forwarded"] += 1
                try:
                    _, actions = self.transactions.send_request(
                        out, Peer(destination.transport, destination.host, destination.port, route), at)
                except ValueError:
                    return  # already forwarding this very CANCEL
                self._perform(actions, at)
            if isinstance(hop, Destination):
                send(hop, now)
            else:
                # The INVITE's seed, so the same first destination (§16.11).
                self._locate(hop, seed_for(cancel.call_id, cancel.cseq.seq, hop.host),
                             self.locating.first_destination(send, "cancel_unroutable"))
        return True

    # -- destination set probes --------------------------------------------------------------

    def _probe(self, now: float) -> None:
        """OPTIONS to the set members due a probe (``Dispatcher.schedule``),
        each in a client transaction of its own through the edge the worker
        named (``probe_via``); its end goes to ``Dispatcher.probe_ended``."""
        dispatcher = self.dispatcher
        schedule = dispatcher.schedule if dispatcher is not None else None
        if dispatcher is None or schedule is None:
            return
        dispatcher.changes.extend(schedule.expire(now))
        if dispatcher.probe_via is None:
            return  # no edge to send through yet: the probes wait
        edge, sent_by = dispatcher.probe_via
        for member, probe in schedule.due(now):
            self.stats["dispatch_probes"] += 1
            try:
                uri = parse_uri(member[1])
                hop = hop_for(uri, resolve=self.resolve)
            except (ParseError, RoutingError):
                dispatcher.probe_ended(member, probe, None, now)
                continue
            request = dispatching.probe_request(uri, token=dispatcher.probe_token(), sent_by=sent_by,
                                                shard_param=f"{SHARD_PARAM}={self.shard}")
            peer = Peer(hop.transport, hop.host, hop.port, EdgeRoute(edge, None, NO_LOCAL, sent_by))
            key, actions = self.transactions.send_request(request, peer, now)
            if key is not None:
                self.probes[key] = (member, probe)
            self._perform(actions, now)

    # -- stateless paths -----------------------------------------------------------------------

    def _forward_ack(self, request: Request, source: Peer) -> None:
        """ACK for a 2xx (and other requests the TU forwards without a
        transaction): loose-route it onwards (§16.11, §12.2.1.1)."""
        services = self.services
        local = services.local
        routed = preprocess_routes(request, local)
        if local.is_us(request.uri) and not request.routes:
            return  # an ACK for a response we generated ourselves
        if not services.is_trusted(source.host) and not services.tokens.authorises(
                request, routed, source.host):
            # An ACK cannot be refused with a response: one from outside
            # that is not in a dialog we set up goes nowhere (no relay).
            services.note("dialog_refused", request, source.host, "ACK outside a dialog of ours")
            return
        came = route_of(source)
        advertise = self._advertise(came)
        try:
            flow = route_flow(routed, services.flows, arrival_flow(source)) if routed else None
        except ForgedFlowToken:
            services.note("dialog_refused", request, source.host, "ACK with a forged flow token")
            return

        def send_to(peer: Peer) -> None:
            via = proxy_via(request, peer.transport, advertise, self.salt + "ack")
            out = forward_copy(request, None, via=via, record_route=None, in_place=True)
            self._out.append(Send(out, peer))
        if flow is not None:
            # RFC 5626 §5.3: over the callee's flow, never located.
            send_to(self._flow_peer(flow, request.uri, advertise))
            return
        try:
            hop = next_hop(next_hop_uri(request), resolve=self.resolve)
        except RoutingError:
            self.stats["ack_unroutable"] += 1
            return
        route = EdgeRoute(came.edge if came else None, None, NO_LOCAL, advertise)

        def send(destination: Destination, now: float) -> None:
            send_to(Peer(destination.transport, destination.host, destination.port, route))
        if isinstance(hop, LocateTarget):
            self._locate(hop, seed_for(request.call_id, request.cseq.seq, hop.host),
                         self.locating.first_destination(send, "ack_unroutable"))
        else:
            send(Destination(hop.transport, hop.host, hop.port), 0.0)

    def _forward_stray(self, response: Response, source: Peer) -> None:
        """§16.11: a response with no transaction (the owner changed or the
        shard restarted) goes on by its Via stack."""
        if not self.services.local.is_us_via(response.via):
            self.stats["stray_not_ours"] += 1
            return
        result = forward_response_statelessly(response)
        if result is None:
            return
        forwarded, peer = result
        came = route_of(source)
        route = EdgeRoute(came.edge if came else None, None, NO_LOCAL, None)
        self._out.append(Send(forwarded, Peer(peer.transport, peer.host, peer.port, route)))

    def _advertise(self, came: EdgeRoute | None) -> str:
        """The address for our Via and Record-Route: the one the request's
        edge advertises, else the first one we know."""
        if came is not None and came.advertise:
            return came.advertise
        for host, port in sorted(self.services.local.addresses):
            return f"{host}:{port}" if port else host
        return "127.0.0.1:5060"

    # -- deadlines ---------------------------------------------------------------------------

    def _proxy_deadline(self) -> float | None:
        deadlines = self._deadlines
        while deadlines:
            deadline, _, ctx = deadlines[0]
            current = ctx.next_deadline()
            if ctx.finished or current is None or current > deadline:
                heapq.heappop(deadlines)
                if current is not None and not ctx.finished:
                    heapq.heappush(deadlines, (current, next(self._seq), ctx))
                continue
            return deadline
        return None


def _may_have_looped(request: Request, local: LocalAddresses) -> bool:
    """Cheap pre-check for §16.3 step 4: only a request carrying a Via with
    one of our addresses can have looped through us."""
    vias = request.get_all("via")
    if len(vias) < 2:
        return False
    ours = local.sent_by_texts
    return any(text in via for via in vias for text in ours)


def note_source(request: Request, source: Peer) -> None:
    """RFC 3261 §18.2.1: add ``received`` when the top Via's host is not the
    packet's source address; RFC 3581 §4: fill ``rport`` when asked. Responses
    then follow the real path back, also when another shard forwards them
    statelessly after a failover."""
    via = request.via
    host = via.host[1:-1] if via.host.startswith("[") else via.host
    updated = via
    if host != source.host:
        updated = updated.with_param("received", source.host)
    if via.has_rport and via.rport is None:
        updated = updated.with_param("rport", str(source.port))
    if updated is not via:
        request.set_top_via(updated)


def _contact_address(target: Target, transport: str, resolve: Resolver) -> tuple[str, int] | None:
    """Host and port of a registered Contact, reached over ``transport``."""
    try:
        hop = hop_for(target.uri, default_transport=transport, resolve=resolve)
    except RoutingError:
        return None
    # hop_for routes only SIP URIs, so the target's has a port attribute.
    return hop.host, target.uri.port or DEFAULT_PORTS.get(transport, 5060)  # type: ignore[union-attr]
