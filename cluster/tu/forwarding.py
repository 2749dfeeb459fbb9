"""Stateful proxying (RFC 3261 §16.5–§16.10), sans-IO: a decision's targets
become the branches of a response context; each branch's next hop is an
address, an RFC 5626 flow or a host name the runtime locates (RFC 3263),
and a branch fails over between its destinations on a 503, a transport
error or a timeout (§4.3, ``cluster.proxy.failover``). Responses, timeouts
and the application's failure hook come back here."""

from __future__ import annotations

import dataclasses
import heapq
import logging

from cluster.app.api import Call, Proxy, Reply, Target
from cluster.dns.rfc3263 import Destination, Location
from cluster.dns.rfc3263 import Target as LocateTarget
from cluster.proxy import identity
from cluster.proxy.context import Branch, Cancel, Exhausted, Forward, ResponseContext, Upstream
from cluster.proxy.context import Output as ContextOutput
from cluster.proxy.failover import (
    FAILOVER_STATUSES, Attempts, attempt_salt, blocked_failure, location_failure, seed_for, warning,
)
from cluster.proxy.flows import Flow, ForgedFlowToken, dialog_flow, route_flow
from cluster.proxy.routing import (
    DEFAULT_PORTS, RoutingError, forward_copy, hop_for, next_hop, next_hop_uri, proxy_via,
    record_route_set,
)
from cluster.sip import URI, Request, Response, SipURI
from cluster.sip.transaction.actions import Send, TransactionKey
from cluster.sip.transaction.peer import Peer

from . import dispatching
from .base import Resolver, TUBase
from .flowroutes import arrival_flow, flow_peer
from .outputs import NO_LOCAL, EdgeRoute, route_of

log = logging.getLogger("sipcluster.worker")


class Forwarding(TUBase):
    """The forwarding layer of ``TransactionUser``."""

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
        hop: Destination | LocateTarget | None = None
        try:
            if flow is not None:
                # RFC 5626 §5.3: a strict flow is the one way to its UA, so
                # no DNS and no failover; a flow that is gone is
                # _flow_failed's. A plain connection's named Contact is
                # located (RFC 3261 §18.2.2: where the edge connects once
                # the connection has closed).
                hop = None if flow.strict else _connection_contact(flow, branch.target, self.resolve)
                if hop is None:
                    peer = self._flow_peer(flow, branch.target, advertise)
            else:
                hop = self._hop(ctx.request, target, branch.target, advertise, salt)
        except RoutingError as error:
            # No way to the target (unusable URI): the branch fails with the
            # error's status (§16.7 step 6).
            self._branch_unroutable(ctx, branch, error.status, error.reason, now)
            return
        if hop is None:
            assert flow is not None
            if flow.strict:
                branch.extra["flow"] = True
            self._send_branch(ctx, branch, peer, salt, flow, now)
            return
        if isinstance(hop, Destination):
            attempts = branch.attempts = Attempts((hop,))
            if not self._next_attempt(ctx, branch, now):
                # A literal address that is blocked fails the branch now, as
                # a located one does: nothing is sent, so nothing would end it.
                self._branch_unroutable(ctx, branch, *blocked_failure(hop.host, attempts.skipped), now)
            return
        request = ctx.request
        seed = seed_for(request.call_id, request.cseq.seq, hop.host)
        # A registration's connection stays a way to the UA when its
        # Contact's name does not locate (§18.2.2: the edge writes on it).
        connection = None
        if flow is not None:
            branch.extra["connection"] = flow
            connection = Destination(flow.transport.upper(), *flow.peer)
        elif target.edge and target.received and target.conn is not None and not target.path:
            connection = Destination((target.transport or "").upper(), *target.received)
        located = hop
        self._locate(hop, seed, lambda location, at: self._branch_located(
            ctx, branch, located, location, at, connection))

    def _branch_located(self, ctx: ResponseContext, branch: Branch, target: LocateTarget,
                        location: Location, now: float, connection: Destination | None = None) -> None:
        if branch.state == "done" or ctx.finished:
            # Timer C, the branch timeout or another branch's 2xx ended it meanwhile.
            self.stats["dns_answer_late"] += 1
            return
        if ctx.cancelled:
            branch.request = ctx.request
            self._run(ctx, ctx.on_failure(branch, 487, now), now)
            return
        if not location.destinations and connection is not None:
            self.stats["dns_contact_over_connection"] += 1
            location = Location((connection,))
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
        # A new Via branch for each destination (§4.3), one that a shard
        # taking over derives again (§16.11): from the destination's place.
        salt = attempt_salt(self.salt, branch.index, attempts.position - 1)
        if attempts.sent > 1:
            branch.state = "trying"
        flow = branch.extra.get("connection")
        if isinstance(flow, Flow):
            # On the registration's connection while it is open (§18.2.2),
            # its token in our Record-Route (RFC 5626 §5.3).
            route = EdgeRoute(flow.edge, flow.conn, NO_LOCAL, advertise)
        else:
            flow = None
            route = EdgeRoute(target.edge or (came.edge if came else None), target.conn, NO_LOCAL, advertise)
        peer = Peer(destination.transport, destination.host, destination.port, route)
        self._send_branch(ctx, branch, peer, salt, flow, now)
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
        elif timer in ("B", "F", "transport") and self._fail_over(
                ctx, branch, key, now, unreachable=key != self._link_refused):
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

    def _hop(self, request: Request, target: Target, uri: URI | None, advertise: str,
             salt: str) -> Destination | LocateTarget:
        """The next hop towards ``target`` (§16.6 steps 6-7, RFC 3327 Path,
        RFC 5626 flows): its address, or the host name DNS must locate
        (RFC 3263); RoutingError when there is no way there."""
        if target.edge and target.received and not target.path:
            transport = (target.transport or "UDP").upper()
            peer_host, peer_port = target.received
            if transport in LOCATED_CONNECTIONS:
                # The edge writes on the registration's connection while
                # it is open; once it is closed the edge connects to this
                # address instead, which must be the Contact's (a UA on TCP
                # listens there, RFC 3261 §18.2.2), not the closed
                # connection's ephemeral source port — located by DNS like
                # any other target when it is a name (RFC 3263).
                contact = _contact_hop(target.uri, transport, self.resolve)
                if contact is not None:
                    return contact
            elif transport != "UDP":
                # WebSocket (RFC 7118 §5): the UA accepts no connection, and
                # its Contact host is often made up (.invalid): never located.
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



LOCATED_CONNECTIONS = frozenset(("TCP", "TLS"))
"""Transports of a registration's connection whose Contact, when the
connection has closed, is reached by connecting to it: by DNS when it names
a host (RFC 3263). A plain UDP registration is a target like any other (its
Contact is located the same way); an RFC 5626 flow is never located."""


def _contact_hop(uri: URI, transport: str, resolve: Resolver) -> Destination | LocateTarget | None:
    """Where the Contact ``uri`` of a registration over a ``transport``
    connection is: its address, what DNS must locate (over that transport:
    the UA listens for it there), or None for a URI that is not SIP."""
    if not isinstance(uri, SipURI):
        return None
    hop = next_hop(uri, resolve=resolve)
    if isinstance(hop, LocateTarget):
        secure = uri.scheme == "sips" or transport == "TLS"
        return LocateTarget(hop.host, hop.port, transport, secure)
    return Destination(transport, hop.host, uri.port or DEFAULT_PORTS.get(transport, 5060))


def _connection_contact(flow: Flow, uri: URI | None, resolve: Resolver) -> LocateTarget | None:
    """The Contact ``uri`` of a UA on a plain connection ``flow``, when DNS
    must locate it (a name, over a transport in ``LOCATED_CONNECTIONS``)."""
    if uri is None or flow.transport.upper() not in LOCATED_CONNECTIONS:
        return None
    hop = _contact_hop(uri, flow.transport.upper(), resolve)
    return hop if isinstance(hop, LocateTarget) else None


def _contact_address(target: Target, transport: str, resolve: Resolver) -> tuple[str, int] | None:
    """Host and port of a registered Contact, reached over ``transport``."""
    try:
        hop = hop_for(target.uri, default_transport=transport, resolve=resolve)
    except RoutingError:
        return None
    # hop_for routes only SIP URIs, so the target's has a port attribute.
    return hop.host, target.uri.port or DEFAULT_PORTS.get(transport, 5060)  # type: ignore[union-attr]
