"""The transaction user of a worker: checks, application decisions, proxying.

It turns transaction-layer events into application calls and carries out the
decisions (RFC 3261 §16 for proxying, §10.3 via the registrar, §22 for
challenges). The proxy core (``cluster.proxy``) is sans-IO; this module owns
the mapping from client transactions to branches and the per-call deadlines.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from typing import TYPE_CHECKING

from cluster.app.api import Call, Challenge, Proxy, Register, Reply, Target
from cluster.proxy import identity
from cluster.proxy.context import Cancel, Exhausted, Forward, ResponseContext, Upstream
from cluster.proxy.routing import (
    DEFAULT_PORTS,
    forward_copy, hop_for, loop_detected, next_hop_uri, preprocess_routes, proxy_via,
    record_route_set,
)
from cluster.sip import ParseError, Request, Response, SipURI, TelURI, make_response
from cluster.sip.transaction.actions import (
    AckReceived, CancelReceived, RequestReceived, ResponseReceived, Send, StrayResponse,
    TransactionTerminated, TransactionTimeout, TransportError,
)
from cluster.sip.transaction.peer import Peer
from cluster.sip.transaction.stateless import forward_response_statelessly

if TYPE_CHECKING:  # pragma: no cover
    from .node import WorkerNode

log = logging.getLogger("sipcluster.worker")

# Option tags this proxy understands in Proxy-Require (§16.3 step 5) and, as a
# registrar, in Require (§8.2.2.3).
SUPPORTED = frozenset({"path", "outbound"})
# The counter name of each action type, built once rather than per action.
_STAT_NAMES: dict[type, str] = {}
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, MESSAGE, INFO, UPDATE, PRACK, SUBSCRIBE, NOTIFY, REFER"


class TransactionUser:
    def __init__(self, worker: "WorkerNode") -> None:
        self.worker = worker
        self.contexts: dict[tuple, ResponseContext] = {}  # server key -> context
        self.branches: dict[tuple, tuple[ResponseContext, object]] = {}  # client key -> (ctx, branch)
        self.calls: dict[int, Call] = {}
        self._deadlines: list[tuple[float, int, ResponseContext]] = []
        self._seq = itertools.count()

    # -- plumbing ------------------------------------------------------------------

    @property
    def transactions(self):
        return self.worker.transactions

    def perform(self, actions: list, now: float) -> None:
        for action in actions:
            kind = type(action)
            if kind is Send:
                self.worker.send_message(action.message, action.destination, action.key, now)
            elif kind is RequestReceived:
                self.on_request(action.key, action.request, action.source, now)
            elif kind is ResponseReceived:
                self.on_response(action.key, action.response, now)
            elif kind is CancelReceived:
                self.on_cancel(action, now)
            elif kind is AckReceived:
                self.forward_stateless_request(action.request, action.source, now)
            elif kind is StrayResponse:
                self.forward_stray(action.response, action.source)
            elif kind is TransactionTimeout:
                self.on_client_failure(action.key, now, timer=action.timer)
            elif kind is TransportError:
                self.on_client_failure(action.key, now, timer="transport")
            elif kind is TransactionTerminated:
                self.branches.pop(action.key, None)
            name = _STAT_NAMES.get(kind)
            if name is None:
                name = _STAT_NAMES[kind] = f"tu_{kind.__name__}"
            self.worker.stats[name] += 1

    def respond(self, response: Response, now: float) -> None:
        self.perform(self.transactions.send_response(response, now), now)

    def reply(self, request: Request, status: int, reason: str | None = None,
              headers: tuple = (), body: bytes = b"") -> None:
        response = make_response(request, status, reason, headers=headers, body=body)
        self.respond(response, self.worker.now())

    # -- requests --------------------------------------------------------------------

    def on_request(self, key: tuple, request: Request, source: Peer, now: float) -> None:
        status, headers, routed = self.check(request)
        if status:
            self.reply(request, status, headers=headers)
            return
        services = self.worker.services
        if not services.is_trusted(source.host):
            identity.strip_untrusted(request)  # RFC 3325 §5: an unproved claim
        app = self.worker.application
        handler_name, handler = app.handler_for(request.method)
        call = Call(request, source, services, self.worker.node_id, handler_name, routed)
        if handler is None:
            self.reply(request, 501, headers=(("Allow", ALLOW),))
            return
        try:
            decision = handler(call)
        except ParseError as error:
            self.reply(request, 400, headers=(("Warning", f'399 sipcluster "{error.reason}"'),))
            return
        self.execute(key, call, decision, now)

    def check(self, request: Request) -> tuple[int, tuple, tuple]:
        """§16.3 request validation (and the registrar's §8.2.2 checks); the
        third value is our own Route entries removed (``preprocess_routes``)."""
        uri = request.uri
        if not isinstance(uri, (SipURI, TelURI)):
            return 416, (), ()  # RFC 4475 unkscm / novelsc
        unknown = [tag for tag in request.proxy_require if tag.lower() not in SUPPORTED]
        if request.method == "REGISTER":
            unknown += [tag for tag in request.require if tag.lower() not in SUPPORTED]
        if unknown:
            return 420, (("Unsupported", ", ".join(unknown)),), ()  # RFC 4475 bext01
        local = self.worker.services.local
        routed = preprocess_routes(request, local)
        mf = request.max_forwards
        if mf is not None and mf <= 0 and not (request.method == "OPTIONS" and local.is_us(request.uri)):
            return 483, (), routed  # §16.3 step 3 (RFC 4475 zeromf)
        if request.method != "REGISTER" and self._may_have_looped(request, local) \
                and loop_detected(request, local):
            log.info("request looped back to the cluster (482)",
                     extra={"method": request.method, "routes_removed": len(routed)})
            return 482, (), routed
        return 0, (), routed

    @staticmethod
    def _may_have_looped(request: Request, local) -> bool:
        """Cheap pre-check for §16.3 step 4: only a request carrying a Via
        with one of our addresses can have looped through us."""
        vias = request.get_all("via")
        if len(vias) < 2:
            return False
        ours = local.sent_by_texts
        return any(text in via for via in vias for text in ours)

    def execute(self, key: tuple, call: Call, decision, now: float) -> None:
        request = call.request
        if decision is None:
            return
        if isinstance(decision, Reply):
            self.reply(request, decision.status, decision.reason, decision.headers, decision.body)
        elif isinstance(decision, Challenge):
            self.respond(self.worker.services.challenge(request, decision, call.source.host), now)
        elif isinstance(decision, Register):
            self.worker.start_register(request, call.source)
        elif isinstance(decision, Proxy):
            self.proxy(key, call, decision, now)
        else:
            raise TypeError(f"unknown decision {decision!r}")

    # -- proxying (§16) ------------------------------------------------------------------

    def proxy(self, key: tuple, call: Call, decision: Proxy, now: float) -> None:
        ctx = self.contexts.get(key)
        if ctx is None:
            ctx = ResponseContext(key, call.request)
            ctx.extra = {"record_route": decision.record_route, "call": call,  # type: ignore[attr-defined]
                         "targets": {}}
            self.contexts[key] = ctx
            self.calls[id(ctx)] = call
        outputs = ctx.add_targets([t.uri for t in decision.targets], parallel=decision.parallel,
                                  timeout=decision.timeout, now=now)
        targets = ctx.extra["targets"]  # type: ignore[attr-defined]
        pending = list(decision.targets)
        for output in outputs:
            if isinstance(output, Forward):
                targets[output.branch.index] = pending.pop(0) if pending else Target(output.branch.target)
        for t, branch in zip(decision.targets, ctx.branches[-len(decision.targets):]):
            targets.setdefault(branch.index, t)
        self.run_outputs(ctx, outputs, now)

    def run_outputs(self, ctx: ResponseContext, outputs: list, now: float) -> None:
        for output in outputs:
            if isinstance(output, Forward):
                self.forward_branch(ctx, output.branch, now)
            elif isinstance(output, Upstream):
                call = self.calls.get(id(ctx))
                hook = self.worker.application.on_response
                if hook is not None and call is not None:
                    try:
                        hook(call, output.response)
                    except Exception:  # noqa: BLE001 - an app bug must not stop the call
                        log.exception("response hook failed")
                self.respond(output.response, now)
            elif isinstance(output, Cancel):
                self.cancel_branch(ctx, output.branch, now)
            elif isinstance(output, Exhausted):
                self.on_exhausted(ctx, output.best, now)
        self._schedule(ctx)
        if ctx.finished:
            self.contexts.pop(ctx.server_key, None)
            self.calls.pop(id(ctx), None)

    def forward_branch(self, ctx: ResponseContext, branch, now: float) -> None:
        call = self.calls[id(ctx)]
        target: Target = ctx.extra["targets"].get(branch.index) or Target(branch.target)  # type: ignore[attr-defined]
        edge_route = call.source.context
        advertise = getattr(edge_route, "advertise", None) or self.worker.default_advertise()
        try:
            transport, peer_host, peer_port = self._hop(
                ctx.request, target, branch.target, advertise, f"{self.worker.salt}{branch.index}")
            via = proxy_via(ctx.request, transport, advertise, f"{self.worker.salt}{branch.index}",
                            shard=self.worker.node_id)
            rr = record_route_set(advertise, call.source.transport, transport,
                                  self._dialog_token(call, peer_host)) \
                if ctx.extra["record_route"] else None  # type: ignore[attr-defined]
            request = forward_copy(ctx.request, branch.target, via=via, record_route=rr, path=target.path)
            identity.for_next_hop(request, self.worker.services.is_trusted(peer_host))
        except ParseError as error:
            # No way to the target (unresolvable host, unusable URI): the
            # branch fails with the error's status, 404 for a plain 400.
            branch.request = ctx.request
            self.run_outputs(ctx, ctx.on_failure(
                branch, error.status if error.status != 400 else 404, now), now)
            return
        branch.request = request
        route = self.worker.route_to(target.edge or getattr(edge_route, "edge", None),
                                     target.conn, advertise)
        peer = Peer(transport, peer_host, peer_port, route)
        try:
            client_key, actions = self.transactions.send_request(request, peer, now)
        except ValueError:
            # The same branch again: a retransmission reaching a new owner is
            # forwarded statelessly with the branch the old owner used (§16.11).
            self.worker.send_message(request, peer, None, now)
            return
        branch.key = client_key
        if client_key is not None:
            self.branches[client_key] = (ctx, branch)
        self.perform(actions, now)

    def _dialog_token(self, call: Call, hop_host: str) -> str | None:
        """The dialog token for our Record-Route (``DialogTokens``): open
        for a dialog set up by a trusted source or an identified sender,
        else scoped to the host the request goes to."""
        request = call.request
        tag = request.from_.tag
        if not tag:
            return None
        tokens = self.worker.services.tokens
        open_ = call.identity is not None or call.from_trusted
        return tokens.make(request.call_id, tag, "" if open_ else tokens.scope_for(hop_host))

    def cancel_branch(self, ctx: ResponseContext, branch, now: float) -> None:
        """§9.1: CANCEL mirrors the request's Request-URI, Call-ID, To, From,
        CSeq number and top Via (same branch) and its Route set."""
        original: Request = branch.request
        cancel = Request("CANCEL", original.uri, [
            ("Via", str(original.via)),
            ("Max-Forwards", "70"),
            ("From", original.get("from")),
            ("To", original.get("to")),
            ("Call-ID", original.call_id),
            ("CSeq", f"{original.cseq.seq} CANCEL"),
        ])
        for route in original.get_all("route"):
            cancel.add("Route", route)
        peer = self.transactions.peer_of(branch.key) if branch.key is not None else None
        if peer is None:
            return
        try:
            cancel_key, actions = self.transactions.send_request(cancel, peer, now)
        except ValueError:
            return
        self.perform(actions, now)

    def on_response(self, key: tuple, response: Response, now: float) -> None:
        entry = self.branches.get(key)
        if entry is None:
            return  # a response to our CANCEL, or to a context that is gone
        ctx, branch = entry
        self.run_outputs(ctx, ctx.on_response(branch, response, now), now)

    def on_client_failure(self, key: tuple, now: float, *, timer: str) -> None:
        entry = self.branches.get(key)
        if entry is None:
            return
        ctx, branch = entry
        if timer == "C":
            self.run_outputs(ctx, ctx.on_deadline(float("inf")), now)
        else:
            self.run_outputs(ctx, ctx.on_timeout(branch, now), now)

    def on_exhausted(self, ctx: ResponseContext, best: Response, now: float) -> None:
        hook = self.worker.application.on_failure
        call = self.calls.get(id(ctx))
        decision = None
        if hook is not None and call is not None and not ctx.cancelled:
            try:
                decision = hook(call, best)
            except Exception:  # noqa: BLE001
                log.exception("failure hook failed")
        if isinstance(decision, Proxy) and decision.targets:
            self.proxy(ctx.server_key, call, decision, now)  # type: ignore[arg-type]
            return
        if isinstance(decision, Reply):
            ctx.final_sent = True
            self.reply(ctx.request, decision.status, decision.reason, decision.headers, decision.body)
            return
        self.run_outputs(ctx, ctx.finish(), now)

    def on_cancel(self, action: CancelReceived, now: float) -> None:
        # §9.2 / §16.10: answer the CANCEL, then cancel the pending branches;
        # the callee's 487 comes back as the best response.
        if action.key is None:
            if not self.cancel_without_context(action.request, action.source, now):
                self.respond(make_response(action.request, 481), now)
            return
        self.respond(make_response(action.request, 200), now)
        ctx = self.contexts.get(action.key) if action.key is not None else None
        if ctx is not None:
            self.run_outputs(ctx, ctx.cancel(), now)
            if not any(b.pending for b in ctx.branches) and not ctx.final_sent:
                ctx.final_sent = True
                self.respond(make_response(ctx.request, 487), now)
        elif action.key is not None and self.transactions.state(action.key) in ("Proceeding",):
            request = self.transactions.request_of(action.key)
            if request is not None:
                self.respond(make_response(request, 487), now)

    def _hop(self, request: Request, target: Target, uri, advertise: str,
             salt: str) -> tuple[str, str, int]:
        """Transport, host and port of the next hop towards ``target``
        (§16.6 steps 6-7, RFC 3327 Path, RFC 5626 flows); ParseError when
        there is no way there."""
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
                    target, transport, self.worker.resolve) or (peer_host, peer_port)
            return transport, peer_host, peer_port
        if target.path:
            # RFC 3327 §5.3: the Path goes first in the route set; the
            # request as it will leave says where that is.
            probe = forward_copy(request, uri, via=proxy_via(request, "UDP", advertise, salt),
                                 record_route=None, path=target.path)
            next_hop = next_hop_uri(probe)
        else:
            # Without building the request: the top Route, else the target.
            routes = request.routes
            next_hop = routes[0].uri if routes else (uri if uri is not None else request.uri)
        hop = hop_for(next_hop, resolve=self.worker.resolve)
        return hop.transport, hop.host, hop.port

    def cancel_without_context(self, cancel: Request, source: Peer, now: float) -> bool:
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
        handler_name, handler = self.worker.application.handler_for(cancel.method)
        if handler is None:
            return False
        call = Call(cancel, source, self.worker.services, self.worker.node_id, handler_name)
        try:
            decision = handler(call)
        except ParseError:
            return False
        if not isinstance(decision, Proxy) or not decision.targets:
            return False
        edge_route = source.context
        advertise = getattr(edge_route, "advertise", None) or self.worker.default_advertise()
        copies = []
        for index, target in enumerate(decision.targets):
            salt = f"{self.worker.salt}{index}"
            try:
                transport, host, port = self._hop(cancel, target, target.uri, advertise, salt)
                via = proxy_via(cancel, transport, advertise, salt, shard=self.worker.node_id)
                out = forward_copy(cancel, target.uri, via=via, record_route=None, path=target.path)
            except ParseError:
                continue  # an unroutable target: the INVITE never went there either
            route = self.worker.route_to(target.edge or getattr(edge_route, "edge", None), target.conn, advertise)
            copies.append((out, Peer(transport, host, port, route)))
        if not copies:
            return False
        self.respond(make_response(cancel, 200), now)
        for out, peer in copies:
            self.worker.stats["cancel_without_context_forwarded"] += 1
            try:
                _, actions = self.transactions.send_request(out, peer, now)
            except ValueError:
                continue  # already forwarding this very CANCEL
            self.perform(actions, now)
        return True

    # -- stateless paths -------------------------------------------------------------------

    def forward_stateless_request(self, request: Request, source: Peer, now: float) -> None:
        """ACK for a 2xx (and other requests the TU forwards without a
        transaction): loose-route it onwards (§16.11, §12.2.1.1)."""
        services = self.worker.services
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
        edge_route = source.context
        advertise = getattr(edge_route, "advertise", None) or self.worker.default_advertise()
        try:
            hop = hop_for(next_hop_uri(request), resolve=self.worker.resolve)
        except ParseError:
            self.worker.stats["ack_unroutable"] += 1
            return
        via = proxy_via(request, hop.transport, advertise, self.worker.salt + "ack")
        out = forward_copy(request, None, via=via, record_route=None, in_place=True)
        route = self.worker.route_to(getattr(edge_route, "edge", None), None, advertise)
        self.worker.send_message(out, Peer(hop.transport, hop.host, hop.port, route), None, now)

    def forward_stray(self, response: Response, source: Peer) -> None:
        """§16.11: a response with no transaction (the owner changed or the
        shard restarted) goes on by its Via stack."""
        if not self.worker.services.local.is_us_via(response.via):
            self.worker.stats["stray_not_ours"] += 1
            return
        result = forward_response_statelessly(response)
        if result is None:
            return
        forwarded, peer = result
        edge_route = source.context
        route = self.worker.route_to(getattr(edge_route, "edge", None), None, None)
        self.worker.send_message(forwarded, Peer(peer.transport, peer.host, peer.port, route),
                                 None, self.worker.now())

    # -- deadlines --------------------------------------------------------------------------

    def _schedule(self, ctx: ResponseContext) -> None:
        deadline = ctx.next_deadline()
        if deadline is not None and not ctx.finished:
            heapq.heappush(self._deadlines, (deadline, next(self._seq), ctx))
            self.worker.kick_timers()

    def next_deadline(self) -> float | None:
        while self._deadlines:
            deadline, _, ctx = self._deadlines[0]
            current = ctx.next_deadline()
            if ctx.finished or current is None or current > deadline:
                heapq.heappop(self._deadlines)
                if current is not None and not ctx.finished:
                    heapq.heappush(self._deadlines, (current, next(self._seq), ctx))
                continue
            return deadline
        return None

    def handle_timer(self, now: float) -> None:
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, ctx = heapq.heappop(self._deadlines)
            if not ctx.finished:
                self.run_outputs(ctx, ctx.on_deadline(now), now)


def _contact_address(target: Target, transport: str, resolve) -> tuple[str, int] | None:
    """Host and port of a registered Contact, reached over ``transport``."""
    try:
        hop = hop_for(target.uri, default_transport=transport, resolve=resolve)
    except ParseError:
        return None
    return hop.host, target.uri.port or DEFAULT_PORTS.get(transport, 5060)  # type: ignore[union-attr]
