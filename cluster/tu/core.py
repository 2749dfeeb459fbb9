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

This module holds the inputs, the request checks and the application's
decisions; the layers below it are ``base`` (the state), ``forwarding``
(response contexts, location and failover) and ``cancelling`` (CANCEL,
ACK and stray responses, with or without a context).
"""

from __future__ import annotations

import heapq
import logging

from cluster.app.api import Call, Challenge, Decision, Proxy, Register, Reply
from cluster.dns.rfc3263 import Location
from cluster.proxy import identity
from cluster.proxy.routing import (
    SHARD_PARAM, LocalAddresses, RoutingError, hop_for, loop_detected, preprocess_routes,
)
from cluster.sip import ParseError, Request, Response, SipURI, TelURI, parse_uri
from cluster.sip.transaction.actions import (
    AckReceived, Action, CancelReceived, RequestReceived, ResponseReceived, Send, StrayResponse,
    TransactionKey, TransactionTerminated, TransactionTimeout, TransportError,
)
from cluster.sip.transaction.peer import Peer

from . import dispatching
from .base import Headers, Output, Resolver, TUObserver, TUServices
from .cancelling import Cancelling
from .flowroutes import forged_flow
from .outputs import NO_LOCAL, EdgeRoute, StartRegistration, route_of

log = logging.getLogger("sipcluster.worker")

# Option tags this proxy understands in Proxy-Require (§16.3 step 5) and, as a
# registrar, in Require (§8.2.2.3).
SUPPORTED = frozenset({"path", "outbound"})
# The counter name of each action type, built once rather than per action.
_STAT_NAMES: dict[type, str] = {}
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, MESSAGE, INFO, UPDATE, PRACK, SUBSCRIBE, NOTIFY, REFER"

__all__ = ["Output", "Resolver", "TUObserver", "TUServices", "TransactionUser", "note_source"]


class TransactionUser(Cancelling):
    """``application`` decides; ``transactions`` is the worker's transaction
    layer; ``services`` answers the application's questions from memory;
    ``shard`` names this worker (our Via's ``wk``), ``salt`` keeps branches
    of different clusters apart; ``stats`` counts events (the worker's node
    events); ``resolve`` maps a host name to an address without DNS
    (``localhost``), other names are located by the runtime (``Resolve``);
    ``blocklist`` holds the destinations that did not answer (RFC 3263 §4.3);
    ``record_route`` names the whole cluster in Record-Route instead of the
    receiving edge (``cluster.record_route``)."""

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

    def link_refused(self, key: TransactionKey, now: float) -> list[Output]:
        """The link to the edge a ``Send`` for ``key`` was to leave through
        refused it (the edge is restarting or gone): a transport error for
        the transaction (§17.1.4), but the destination was never tried, so
        it is not blocked (RFC 3263 §4.3 learns from a server that did not
        answer, not from our own link) and the next request to it goes."""
        self._link_refused = key
        try:
            return self.transport_error(key, now)
        finally:
            self._link_refused = None

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
                self._forward_ack(action.request, action.source, now)
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


