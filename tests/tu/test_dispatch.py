"""Destination sets in the transaction user: a set as a proxy target,
failover to the next member within the call, active-call counts and the
OPTIONS probes, on a hand-advanced clock."""

from __future__ import annotations

from cluster.app.api import Application
from cluster.dispatch import DestinationSet, Dispatcher, HealthPolicy, HealthRecord, Member, ProbeSchedule
from cluster.sip import Response, make_response, parse_complete
from cluster.sip.transaction.peer import Peer

from .support import CALLER, EDGE, answer, destinations, make_tu, request, requests, sent, statuses

GW1 = "sip:192.0.2.31:5060"
GW2 = "sip:192.0.2.32:5060"
GW3 = "sip:192.0.2.33:5060"


def dispatcher(policy: str = "priority") -> Dispatcher:
    d = Dispatcher()
    d.put_set(DestinationSet.make("carriers", policy, tuple(
        Member.make(uri, priority=p) for uri, p in ((GW1, 0), (GW2, 1), (GW3, 2)))))
    return d


def to_set(name: str = "carriers") -> Application:
    app = Application("test")

    @app.request("INVITE", "CANCEL", "BYE", "MESSAGE")
    def route(call):
        if call.request.to.tag:
            return call.proxy([call.request.uri], record_route=False)
        return call.proxy([call.destination_set(name)])

    return app


def invite_to(tu, now=0.0, call_id="call-1@198.51.100.7"):
    return requests(tu.receive(request(uri="sip:carol@carrier.example", call_id=call_id,
                                       branch=f"z9hG4bK-{call_id.split('@')[0]}"), CALLER, now),
                    "INVITE")


def test_the_first_member_gets_the_call_and_the_user_part_is_kept():
    tu = make_tu(to_set(), dispatcher=dispatcher())
    (invite,) = invite_to(tu)
    assert str(invite.uri) == "sip:carol@192.0.2.31:5060", "a gateway member keeps the callee's user"
    assert statuses(answer(tu, invite, 200, 1.0)) == [200]


def test_a_503_moves_the_call_to_the_next_member_with_a_new_branch():
    tu = make_tu(to_set(), dispatcher=dispatcher())
    (first,) = invite_to(tu)
    out = answer(tu, first, 503, 1.0)
    assert statuses(out) == [], "the caller sees nothing of the failover"
    (second,) = requests(out, "INVITE")
    assert str(second.uri) == "sip:carol@192.0.2.32:5060"
    assert second.via.branch != first.via.branch, "a new client transaction (RFC 3263 §4.3)"
    (dest,) = destinations(out, "INVITE")
    assert (dest.host, dest.port) == ("192.0.2.32", 5060)
    assert statuses(answer(tu, second, 200, 2.0)) == [200]


def test_a_member_that_never_answers_times_out_into_the_next():
    tu = make_tu(to_set(), dispatcher=dispatcher())
    (first,) = invite_to(tu)
    # Timer B (64·T1 = 32 s) with no response: a 408 made here, and failover.
    for now in (0.5, 1.5, 3.5, 7.5, 15.5, 31.5):  # Timer A retransmissions to the first
        assert [str(i.uri) for i in requests(tu.handle_timer(now), "INVITE")] == [str(first.uri)]
    out = tu.handle_timer(32.0)
    (second,) = requests(out, "INVITE")
    assert str(second.uri).endswith("192.0.2.32:5060")
    assert statuses(out) == []


def test_a_busy_answer_does_not_fail_over():
    tu = make_tu(to_set(), dispatcher=dispatcher())
    (first,) = invite_to(tu)
    out = answer(tu, first, 486, 1.0)
    assert requests(out, "INVITE") == []
    assert statuses(out) == [486]


def test_every_member_failing_answers_the_best_response():
    tu = make_tu(to_set(), dispatcher=dispatcher())
    (invite,) = invite_to(tu)
    for now in (1.0, 2.0):
        (invite,) = requests(answer(tu, invite, 503, now), "INVITE")
    out = answer(tu, invite, 503, 3.0)
    assert statuses(out) == [500], "§16.7 step 6: a 503 is not passed on"
    assert not tu.contexts


def test_a_set_with_no_member_up_is_answered_503_with_a_warning():
    d = dispatcher()
    for uri in (GW1, GW2, GW3):
        d.put_health(("carriers", Member.make(uri).uri), HealthRecord(False))
    tu = make_tu(to_set(), dispatcher=d)
    out = tu.receive(request(uri="sip:carol@carrier.example"), CALLER, 0.0)
    assert requests(out, "INVITE") == []
    (response,) = [m for m in sent(out) if isinstance(m, Response) and m.status >= 200]
    assert response.status == 503
    assert "destination set carriers" in response.get("warning")
    assert not tu.contexts
    tu = make_tu(to_set("unknown"), dispatcher=dispatcher())
    assert statuses(tu.receive(request(uri="sip:carol@carrier.example"), CALLER, 0.0)) == [100, 503]


def test_active_calls_last_from_the_invite_to_the_bye():
    d = dispatcher("least-calls")
    tu = make_tu(to_set(), dispatcher=d)
    (one,) = invite_to(tu, call_id="c1")
    (two,) = invite_to(tu, 0.1, call_id="c2")
    assert str(one.uri) != str(two.uri), "the second call avoids the member with one ringing"
    answer(tu, one, 200, 1.0)
    answer(tu, two, 486, 1.0)
    gw1 = ("carriers", Member.make(GW1).uri)
    assert dict(d.active.counts) == {gw1: 1}, "the answered call stays; the busy one ended"
    bye = request("BYE", uri="sip:carol@192.0.2.31:5060", call_id="c1", to_tag="callee", seq=2,
                  branch="z9hG4bK-bye")
    tu.receive(bye, CALLER, 5.0)
    assert not d.active.counts


def test_probes_go_out_when_the_timers_run_and_their_ends_mark_health():
    d = dispatcher()
    d.schedule = ProbeSchedule(HealthPolicy(interval=10.0, timeout=4.0, down_after=1, up_after=1))
    tu = make_tu(to_set(), dispatcher=d)
    gw1, gw2 = ("carriers", Member.make(GW1).uri), ("carriers", Member.make(GW2).uri)
    d.schedule.assign([(gw1, True), (gw2, True)], 0.0)
    assert tu.next_deadline() is None, "no edge to probe through yet"
    assert tu.handle_timer(0.0) == []
    d.probe_via = ("edge-1", "192.0.2.1:5060")
    assert tu.next_deadline() == 0.0
    out = tu.handle_timer(0.0)
    options = {str(m.uri): m for m in requests(out, "OPTIONS")}
    assert set(options) == {GW1, GW2}
    one = options[GW1]
    assert dict(one.via.params).get("wk") == "w1", "the edges bring the answer back to this shard"
    assert one.via.host == "192.0.2.1" and one.call_id != options[GW2].call_id
    assert {d.context.edge for d in destinations(out, "OPTIONS")} == {"edge-1"}
    assert tu.next_deadline() == 0.5, "Timer E of the probes"
    # gw1 answers 200: up, no change; gw2 never answers: down at the probe timeout.
    ok = make_response(one, 200, to_tag="gw")
    tu.receive(parse_complete(ok.to_bytes()), Peer("UDP", "192.0.2.31", 5060, EDGE), 0.2)
    assert d.changes == []
    for now in (0.5, 1.5, 3.5):
        assert [str(m.uri) for m in requests(tu.handle_timer(now), "OPTIONS")] == [GW2], "retransmissions"
    tu.handle_timer(4.0)
    assert [(c.member, c.up, c.status) for c in d.changes] == [(gw2, False, None)]
    assert d.schedule.health[gw1].up and d.schedule.health[gw1].status == 200
    # The next round goes out an interval after the last.
    assert {str(m.uri) for m in requests(tu.handle_timer(10.0), "OPTIONS")} == {GW1, GW2}


def test_the_default_application_relays_foreign_calls_from_trusted_networks_to_the_set():
    from cluster.app.default import application
    from cluster.sip.transaction import TimerConfig, TransactionLayer
    from cluster.tu import TransactionUser
    from nodes.worker.services import Services

    def tu_with(foreign_set):
        services = Services(domains=["example.com"], trusted=["127.0.0.0/8"], nonce_secret=b"k" * 32,
                            nonce_ttl=300, locations=None, users=None, foreign_set=foreign_set,
                            outbound_proxy="sip:127.0.0.9:5099", dispatcher=dispatcher())
        services.learn_advertise("192.0.2.1:5060")
        return TransactionUser(application, TransactionLayer(TimerConfig()), services, shard="w1", salt="t/")

    lines = ["INVITE sip:carol@carrier.example SIP/2.0",
             "Via: SIP/2.0/UDP 127.0.0.5:5060;branch=z9hG4bK-pbx-1;rport", "Max-Forwards: 70",
             "From: <sip:pbx@pbx.example>;tag=p1", "To: <sip:carol@carrier.example>",
             "Call-ID: foreign-1", "CSeq: 1 INVITE", "Content-Length: 0", "", ""]
    trusted = Peer("UDP", "127.0.0.5", 5060, EDGE)
    untrusted = Peer("UDP", "198.51.100.7", 5060, EDGE)
    (invite,) = requests(tu_with("carriers").receive(parse_complete("\r\n".join(lines).encode()), trusted, 0.0),
                         "INVITE")
    assert str(invite.uri) == "sip:carol@192.0.2.31:5060", "the set's first member, not the outbound proxy"
    assert not invite.get_all("route")
    # Without the setting: the outbound proxy as before.
    (invite,) = requests(tu_with(None).receive(parse_complete("\r\n".join(lines).encode()), trusted, 0.0),
                         "INVITE")
    assert str(invite.uri) == "sip:carol@carrier.example" and "127.0.0.9:5099" in invite.get("route")
    # From outside the trusted networks: no relay, set or not.
    out = tu_with("carriers").receive(parse_complete("\r\n".join(lines).encode()), untrusted, 0.0)
    assert statuses(out) == [100, 403] and requests(out, "INVITE") == []
