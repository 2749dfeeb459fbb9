"""The transaction user driven directly: proxying, forking, CANCEL, failover
re-forwarding and call forwarding on a hand-advanced clock (RFC 3261 §16).
No sockets, no worker: every input takes ``now`` and returns outputs."""

from __future__ import annotations

from cluster.app.api import Application
from cluster.sip import Response
from cluster.sip.transaction.actions import Send
from cluster.sip.transaction.peer import Peer
from cluster.sip.transaction.timers import TIMER_C, TimerConfig
from cluster.tu import EdgeRoute, StartRegistration, TUObserver
from cluster.tu.outputs import Resolve

from .support import (
    CALLER, EDGE, US, answer, destinations, forwarding, make_tu, request, requests, sent, statuses,
)

BOB = "sip:bob@192.0.2.20:5070"
BOB2 = "sip:bob@192.0.2.21:5070"
BOB3 = "sip:bob@192.0.2.22:5070"


def test_an_invite_is_proxied_and_the_answers_relayed():
    tu = make_tu(forwarding(BOB))
    out = tu.receive(request(), CALLER, 0.0)
    assert statuses(out) == [100]
    (invite,) = requests(out, "INVITE")
    assert str(invite.uri) == BOB
    assert invite.via.host == "192.0.2.1" and dict(invite.via.params).get("wk") == "w1"
    assert invite.max_forwards == 69
    assert invite.get_all("record-route"), "record-routed by default (§16.6 step 4)"
    (dest,) = destinations(out, "INVITE")
    assert (dest.host, dest.port) == ("192.0.2.20", 5070)
    assert isinstance(dest.context, EdgeRoute) and dest.context.edge == "edge-1"
    assert dest.context.advertise == US
    assert len(tu.contexts) == 1
    assert statuses(answer(tu, invite, 180, 1.0)) == [180]
    ok = answer(tu, invite, 200, 2.0)
    assert statuses(ok) == [200]
    (relayed,) = sent(ok)
    assert len(relayed.vias) == 1, "our Via is removed (§16.7 step 3)"
    assert not tu.contexts, "the context ends with the 2xx"


def test_a_parallel_fork_takes_the_first_2xx_and_cancels_the_rest():
    tu = make_tu(forwarding(BOB, BOB2, BOB3))
    invites = requests(tu.receive(request(), CALLER, 0.0), "INVITE")
    assert sorted(str(i.uri) for i in invites) == sorted((BOB, BOB2, BOB3))
    assert len({i.via.branch for i in invites}) == 3
    one, two, three = invites
    assert statuses(answer(tu, one, 486, 1.0, tag="t1")) == [], "a failure waits for the others"
    answer(tu, two, 180, 1.5, tag="t2")
    answer(tu, three, 180, 1.6, tag="t3")
    out = answer(tu, two, 200, 2.0, tag="t2")
    assert statuses(out) == [200]
    (cancel,) = requests(out, "CANCEL")
    assert cancel.via.branch == three.via.branch, "§9.1: the CANCEL has the INVITE's branch"
    assert str(cancel.uri) == BOB3
    # The cancelled branch's 487 ends it; nothing more goes upstream.
    answer(tu, cancel, 200, 2.1, tag="t3")
    assert statuses(answer(tu, three, 487, 2.2, tag="t3")) == []
    assert not tu.contexts


def test_every_branch_failing_gives_the_best_response_upstream():
    tu = make_tu(forwarding(BOB, BOB2))
    one, two = requests(tu.receive(request(), CALLER, 0.0), "INVITE")
    assert statuses(answer(tu, one, 503, 1.0, tag="t1")) == []
    # §16.7 step 6: 486 beats 503, and a 503 is never passed on anyway.
    assert statuses(answer(tu, two, 486, 1.1, tag="t2")) == [486]


def test_a_sequential_fork_moves_on_when_a_branch_times_out():
    tu = make_tu(forwarding(BOB, BOB2, parallel=False, timeout=5.0))
    (first,) = requests(tu.receive(request(), CALLER, 10.0), "INVITE")
    answer(tu, first, 180, 11.0)
    assert tu.next_deadline() == 15.0, "the branch timeout is armed from its provisional"
    assert requests(tu.handle_timer(14.9), "INVITE") == []
    out = tu.handle_timer(15.0)
    (cancel,) = requests(out, "CANCEL")
    assert str(cancel.uri) == BOB
    out = answer(tu, first, 487, 15.1)
    (second,) = requests(out, "INVITE")
    assert str(second.uri) == BOB2, "the next target gets its turn"
    assert statuses(out) == []


def test_the_callers_cancel_is_answered_and_passed_to_every_ringing_branch():
    tu = make_tu(forwarding(BOB, BOB2))
    one, two = requests(tu.receive(request(), CALLER, 0.0), "INVITE")
    answer(tu, one, 180, 1.0, tag="t1")
    out = tu.receive(request("CANCEL"), CALLER, 2.0)
    assert statuses(out) == [200], "§9.2: the CANCEL gets its own 200"
    (cancel,) = requests(out, "CANCEL")
    assert cancel.via.branch == one.via.branch
    # The silent branch gets its CANCEL once it rings (§9.1).
    out = answer(tu, two, 180, 3.0, tag="t2")
    assert [c.via.branch for c in requests(out, "CANCEL")] == [two.via.branch]
    assert statuses(out) == [], "nothing rings upstream after the CANCEL"
    answer(tu, one, 487, 4.0, tag="t1")
    assert statuses(answer(tu, two, 487, 4.1, tag="t2")) == [487]
    assert not tu.contexts


def test_timer_c_cancels_a_branch_that_rings_forever():
    tu = make_tu(forwarding(BOB), timers=TimerConfig())
    (invite,) = requests(tu.receive(request(), CALLER, 0.0), "INVITE")
    answer(tu, invite, 180, 1.0)
    assert tu.next_deadline() is not None and tu.next_deadline() <= 1.0 + TIMER_C
    assert requests(tu.handle_timer(1.0 + TIMER_C - 0.5), "CANCEL") == []
    (cancel,) = requests(tu.handle_timer(1.0 + TIMER_C), "CANCEL")
    assert cancel.via.branch == invite.via.branch
    assert statuses(answer(tu, invite, 487, 1.0 + TIMER_C + 0.1)) == [487]


def test_a_silent_branch_times_out_as_408_on_timer_b():
    tu = make_tu(forwarding(BOB))
    (invite,) = requests(tu.receive(request(), CALLER, 0.0), "INVITE")
    out = []
    now = 0.0
    while not statuses(out) and now < 40.0:
        now = tu.next_deadline()
        out = tu.handle_timer(now)
    assert statuses(out) == [408] and now == 32.0, "Timer B = 64·T1 (§17.1.1.2, §16.7 step 6)"


def test_a_retransmission_reaching_a_new_owner_keeps_the_branch_the_old_owner_used():
    # Failover (§16.11): the branch of a forwarded request derives from the
    # incoming transaction and the branch index, not from the shard.
    old, new = make_tu(forwarding(BOB), shard="w1"), make_tu(forwarding(BOB), shard="w2")
    (first,) = requests(old.receive(request(), CALLER, 0.0), "INVITE")
    (again,) = requests(new.receive(request(), CALLER, 5.0), "INVITE")
    assert again.via.branch == first.via.branch
    assert dict(again.via.params).get("wk") == "w2", "responses now come to the new owner"


def test_a_cancel_reaching_a_new_owner_follows_each_branch_of_the_fork():
    old, new = make_tu(forwarding(BOB, BOB2)), make_tu(forwarding(BOB, BOB2), shard="w2")
    invites = {str(i.uri): i.via.branch for i in requests(old.receive(request(), CALLER, 0.0), "INVITE")}
    out = new.receive(request("CANCEL"), CALLER, 1.0)
    assert statuses(out) == [200], "forwarded, not answered 481 (§16.10)"
    assert {str(c.uri): c.via.branch for c in requests(out, "CANCEL")} == invites
    assert new.stats["cancel_without_context_forwarded"] == 2


def test_call_forwarding_on_busy_tries_the_forward_target():
    app = forwarding(BOB)

    @app.failure
    def on_busy(call, best):
        if best.status == 486:
            return call.proxy([BOB2])
        return None

    tu = make_tu(app)
    (invite,) = requests(tu.receive(request(), CALLER, 0.0), "INVITE")
    out = answer(tu, invite, 486, 1.0, tag="busy")
    assert statuses(out) == [], "the busy answer is not the caller's"
    (forwarded,) = requests(out, "INVITE")
    assert str(forwarded.uri) == BOB2
    assert forwarded.via.branch != invite.via.branch, "a branch of its own (index 1)"
    assert statuses(answer(tu, forwarded, 200, 2.0, tag="fwd")) == [200]


def test_a_target_named_by_a_host_name_waits_for_dns():
    tu = make_tu(forwarding("sip:bob@nowhere.invalid"))
    out = tu.receive(request(), CALLER, 0.0)
    assert requests(out, "INVITE") == []
    assert statuses(out) == [100], "the answer waits for the runtime's DNS (tests/tu/test_locating.py)"
    (resolve,) = [o for o in out if isinstance(o, Resolve)]
    assert resolve.target.host == "nowhere.invalid"


def test_a_register_decision_is_an_output_and_its_answer_goes_back():
    app = Application("registrar")

    @app.request("REGISTER")
    def register(call):
        return call.register()

    tu = make_tu(app)
    reg = request("REGISTER", uri="sip:example.com", extra=("Contact: <sip:alice@198.51.100.7>",))
    out = tu.receive(reg, CALLER, 0.0)
    (start,) = [o for o in out if isinstance(o, StartRegistration)]
    assert start.request.call_id == reg.call_id and start.source == CALLER
    from cluster.sip import make_response
    out = tu.respond(make_response(start.request, 200), 0.3)
    assert statuses(out) == [200]
    assert all(isinstance(o, Send) and o.destination.context is EDGE for o in out)


def test_a_failed_send_fails_the_branch_at_once():
    tu = make_tu(forwarding(BOB))
    out = tu.receive(request(), CALLER, 0.0)
    (send,) = [o for o in out if isinstance(o, Send) and getattr(o.message, "method", "") == "INVITE"]
    out = tu.transport_error(send.key, 0.1)
    assert statuses(out) == [408], "no response from the branch: a 408 made here (§16.7 step 6)"
    assert not tu.contexts


def _invite_send(out: list) -> Send:
    (send,) = [o for o in out if isinstance(o, Send) and getattr(o.message, "method", "") == "INVITE"]
    return send


def test_a_link_refusal_fails_the_branch_but_does_not_block_the_destination():
    # The edge the INVITE was to leave through is restarting: our link, not
    # the callee, failed (RFC 3263 §4.3 blocks a server that did not answer).
    tu = make_tu(forwarding(BOB))
    send = _invite_send(tu.receive(request(), CALLER, 0.0))
    assert statuses(tu.link_refused(send.key, 0.1)) == [408]
    assert not len(tu.blocklist), "the callee was never tried"
    out = tu.receive(request(call_id="call-2@198.51.100.7", branch="z9hG4bK-caller-2"), CALLER, 0.2)
    assert [str(i.uri) for i in requests(out, "INVITE")] == [BOB], "the next call reaches the callee"


def test_a_blocked_literal_destination_fails_the_branch_at_once():
    tu = make_tu(forwarding(BOB))
    send = _invite_send(tu.receive(request(), CALLER, 0.0))
    tu.transport_error(send.key, 0.1)
    assert len(tu.blocklist) == 1, "a destination that failed is blocked"
    out = tu.receive(request(call_id="call-2@198.51.100.7", branch="z9hG4bK-caller-2"), CALLER, 0.2)
    assert not requests(out, "INVITE")
    assert statuses(out) == [100, 480], "answered at once, not left to the caller's timers"
    (final,) = [m for m in sent(out) if isinstance(m, Response) and m.status == 480]
    assert "blocked" in (final.get("warning") or "")
    assert not tu.contexts


def test_received_and_rport_are_noted_on_the_callers_via():
    tu = make_tu(forwarding(BOB))
    (invite,) = requests(tu.receive(request(), CALLER, 0.0), "INVITE")
    caller_via = invite.vias[1]
    assert caller_via.rport == 5060, "RFC 3581 §4: rport filled in"
    out = answer(tu, invite, 200, 1.0)
    assert isinstance(sent(out)[0], Response)


def test_an_observer_given_at_construction_sees_each_routing_decision():
    seen = []

    class Recording(TUObserver):
        def handler(self, key, handler, call):
            def observed(c):
                decision = handler(c)
                seen.append((key, c.request.method, type(decision).__name__))
                return decision
            return observed

    tu = make_tu(forwarding(BOB), observer=Recording())
    assert requests(tu.receive(request(), CALLER, 0.0), "INVITE"), "the wrapped handler still decides"
    assert seen == [("INVITE", "INVITE", "Proxy")]


def test_record_route_names_the_cluster_and_any_shard_through_any_edge_routes_the_dialog():
    """Issue 18.2: with cluster.record_route the route set names the cluster,
    not the edge that set the dialog up, so in-dialog requests reach any
    edge (the peer resolves the name) and any shard forwards them."""
    cluster = "sip.example.net"
    tu = make_tu(forwarding(BOB), record_route=cluster)
    (invite,) = requests(tu.receive(request(), CALLER, 0.0), "INVITE")
    (rr,) = invite.get_all("record-route")
    assert rr.startswith(f"<sip:{cluster};sct=") and rr.endswith(";lr>"), rr
    # Our Via still names the edge: responses come back where the request left.
    assert invite.via.host == "192.0.2.1"
    # A BYE from the caller through another edge, to another shard.
    other_edge = EdgeRoute("edge-2", None, ("192.0.2.2", 5060), "192.0.2.2:5060")
    other = make_tu(forwarding(BOB, methods=("BYE",)), shard="w2", record_route=cluster)
    bye = request("BYE", uri=BOB, branch="z9hG4bK-caller-bye", seq=2, to_tag="callee",
                  extra=(f"Route: {rr}",))
    out = other.receive(bye, Peer(CALLER.transport, CALLER.host, CALLER.port, other_edge), 5.0)
    (forwarded,) = requests(out, "BYE")
    assert str(forwarded.uri) == BOB and not forwarded.get_all("route"), "our Route was removed (§16.4)"
    assert forwarded.via.host == "192.0.2.2"
    # Without the setting the edge's own address is written, as before.
    (plain,) = requests(make_tu(forwarding(BOB)).receive(request(), CALLER, 0.0), "INVITE")
    assert plain.get_all("record-route")[0].startswith(f"<sip:{US};")
