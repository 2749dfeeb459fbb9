"""CANCEL, ACK and stray responses (RFC 3261 §9.2, §16.10, §16.11), sans-IO:
what follows the branches ``forwarding`` sent — with the response context
when this shard has it, and without (a shard that took the Call-ID over)
by deriving again where the INVITE went and with which branch."""

from __future__ import annotations

import dataclasses

from cluster.app.api import Call, Proxy, Target
from cluster.dns.rfc3263 import Destination
from cluster.dns.rfc3263 import Target as LocateTarget
from cluster.proxy.context import Alternatives
from cluster.proxy.failover import attempt_salt, seed_for
from cluster.proxy.flows import ForgedFlowToken, route_flow
from cluster.proxy.routing import (
    RoutingError, forward_copy, next_hop, next_hop_uri, preprocess_routes, proxy_via,
)
from cluster.sip import Request, Response, make_response
from cluster.sip.responses import local_tag
from cluster.sip.transaction.actions import CancelReceived, Send
from cluster.sip.transaction.peer import Peer
from cluster.sip.transaction.stateless import forward_response_statelessly

from . import dispatching
from .flowroutes import arrival_flow
from .forwarding import Forwarding
from .outputs import NO_LOCAL, EdgeRoute, route_of


MAX_COPIES = 32
"""Copies of one CANCEL or ACK sent without the INVITE's context, at most
(each a branch the INVITE may have had; more are counted and left out)."""


def invite_branches(slots: list[dispatching.Slot], parallel: bool) -> list[tuple[int, Target]]:
    """The branches an INVITE forwarded to ``slots`` may have had, as
    (branch index, target): ``ResponseContext`` numbers branches as it
    starts them. A sequential search, or a single slot, starts them in
    order — a destination set's members one after the other — so each
    target has one index. A parallel fork starts its slots first (0 to
    n-1); a set's later members start when an earlier one fails, in an
    order no shard can know, so each gets every index from n on that it
    could have had."""
    firsts = [target for target, _ in slots]
    later = [Target(uri) for _, slot in slots if isinstance(slot, Alternatives) for uri in slot.targets[1:]]
    if not parallel or len(slots) == 1:
        ordered: list[Target] = []
        for target, slot in slots:
            ordered.append(target)
            if isinstance(slot, Alternatives):
                ordered.extend(Target(uri) for uri in slot.targets[1:])
        return list(enumerate(ordered))
    count = len(slots)
    return [*enumerate(firsts),
            *((index, target) for target in later for index in range(count, count + len(later)))]


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
        not answered 481, so the callee stops ringing. As for any CANCEL it
        is answered 200 here and each copy goes in a client transaction of
        its own (retransmitted over UDP; its response ends there) to where
        the INVITE may have gone (``_follow_invite``). False when routing
        offers no target."""
        if self.check(cancel)[0]:
            return False
        return self._follow_invite(cancel, cancel, source, now)

    def _ack_without_transaction(self, ack: Request, source: Peer, now: float) -> bool:
        """§17.1.1.3: the ACK of a non-2xx final response belongs to the
        INVITE's transaction and carries its branch; one reaching a shard
        with no such transaction (the INVITE's shard failed, or its
        transaction ended) goes where the INVITE may have gone, each copy
        with that attempt's branch, so the next hop's server transaction
        stops retransmitting its response. Routing sees the INVITE's view of
        the ACK (no To tag: §17.1.1.3 copies the rest of the INVITE). False
        when routing offers no target."""
        to = ack.to
        view = ack.copy()
        view.set("To", str(dataclasses.replace(to, params=tuple(p for p in to.params if p[0].lower() != "tag"))))
        return self._follow_invite(ack, view, source, now)

    def _follow_invite(self, request: Request, view: Request, source: Peer, now: float) -> bool:
        """Send ``request`` (a CANCEL, or an ACK for a non-2xx) where routing
        sends the INVITE ``view`` stands for, to every branch and every
        destination it may have tried, each with the Via branch that attempt
        had (``invite_branches``, ``attempt_salt``): the next hop matches it
        to the INVITE whichever shard forwarded that (§9.2, §17.2.3). A
        parallel fork's branches all ring, and which attempt of a sequential
        one or of a failover is live cannot be known here; a hop that never
        saw the INVITE answers a CANCEL 481 and drops an ACK, which ends
        there. False when routing offers no target."""
        handler_name, handler = self.application.handler_for(request.method)
        if handler is None:
            return False
        call = Call(view, source, self.services, self.shard, handler_name)
        decision = handler(call)
        if not isinstance(decision, Proxy) or not decision.targets:
            return False
        came = route_of(source)
        advertise = self._advertise(came)
        slots, _ = dispatching.expand(self.dispatcher, decision.targets, view, self.stats)
        hops: list[tuple[int, Target, Destination | LocateTarget]] = []
        branches = invite_branches(slots, decision.parallel)
        if len(branches) > MAX_COPIES:
            self.stats["follow_invite_capped"] += 1
            del branches[MAX_COPIES:]
        for index, target in branches:
            try:
                hops.append((index, target, self._hop(view, target, target.uri, advertise,
                                                      f"{self.salt}{index}")))
            except RoutingError:
                continue  # an unroutable target: the INVITE never went there either
        if not hops:
            return False
        is_cancel = request.method == "CANCEL"
        if is_cancel:
            self._respond(make_response(request, 200), now)
        for index, target, hop in hops:
            def send(destination: Destination, position: int, at: float, index: int = index,
                     target: Target = target) -> None:
                route = EdgeRoute(target.edge or (came.edge if came else None), target.conn, NO_LOCAL, advertise)
                peer = Peer(destination.transport, destination.host, destination.port, route)
                # The INVITE's Via: the same sent-by (§17.2.3 matches it with the branch).
                via = proxy_via(view, destination.transport, self._onward(peer, advertise),
                                attempt_salt(self.salt, index, position), shard=self.shard)
                out = forward_copy(request, target.uri, via=via, record_route=None, path=target.path)
                if not is_cancel:
                    self.stats["ack_without_transaction_forwarded"] += 1
                    self._out.append(Send(out, peer))
                    return
                self.stats["cancel_without_context_forwarded"] += 1
                try:
                    _, actions = self.transactions.send_request(out, peer, at)
                except ValueError:
                    return  # already forwarding this very CANCEL
                self._perform(actions, at)
            if isinstance(hop, Destination):
                send(hop, 0, now)
            else:
                # The INVITE's seed, so the same order of destinations (§16.11).
                self._locate(hop, seed_for(view.call_id, view.cseq.seq, hop.host),
                             self.locating.each_destination(
                                 send, "cancel_unroutable" if is_cancel else "ack_unroutable"))
        return True

    # -- stateless paths -----------------------------------------------------------------------

    def _forward_ack(self, request: Request, source: Peer, now: float) -> None:
        """An ACK with no transaction here. With a Route set — within a
        dialog we record-routed (an ACK for a 2xx, §12.2.1.1), or through
        proxies named in it — it is loose-routed onwards (§16.11). With none
        it is the ACK of a non-2xx final response whose INVITE transaction
        is not here (an ACK for a 2xx goes to the callee's Contact, not to
        us, when we did not record-route): dropped when the response was
        ours, else it follows the INVITE (``_ack_without_transaction``).
        One whose INVITE had a Route set beyond us cannot be told from an
        ACK for a 2xx and is loose-routed to its first destination."""
        services = self.services
        local = services.local
        routed = preprocess_routes(request, local)
        tag = request.to.tag
        if tag is not None and not routed and not request.routes:
            if tag == local_tag(request.call_id, request.from_.tag or "", request.via.branch or "",
                                str(request.cseq.seq)):
                # Our own final response's To tag (``make_response``): its
                # transaction has ended, and nothing goes further.
                self.stats["ack_for_our_response"] += 1
                return
            if self._ack_without_transaction(request, source, now):
                return
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

