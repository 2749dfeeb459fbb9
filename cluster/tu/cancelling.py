"""CANCEL, ACK and stray responses (RFC 3261 §9.2, §16.10, §16.11), sans-IO:
what follows the branches ``forwarding`` sent — with the response context
when this shard has it, and without (a shard that took the Call-ID over)
by deriving again where the INVITE went and with which branch."""

from __future__ import annotations

from cluster.app.api import Call, Proxy, Target
from cluster.dns.rfc3263 import Destination
from cluster.dns.rfc3263 import Target as LocateTarget
from cluster.proxy.failover import seed_for
from cluster.proxy.flows import ForgedFlowToken, route_flow
from cluster.proxy.routing import (
    RoutingError, forward_copy, next_hop, next_hop_uri, preprocess_routes, proxy_via,
)
from cluster.sip import Request, Response, make_response
from cluster.sip.transaction.actions import CancelReceived, Send
from cluster.sip.transaction.peer import Peer
from cluster.sip.transaction.stateless import forward_response_statelessly

from . import dispatching
from .flowroutes import arrival_flow
from .forwarding import Forwarding
from .outputs import NO_LOCAL, EdgeRoute, route_of


class Cancelling(Forwarding):
    """The CANCEL and ACK layer of ``TransactionUser``."""

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

