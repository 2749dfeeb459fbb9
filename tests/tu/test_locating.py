"""The transaction user with host names (RFC 3263): a next hop that needs DNS
is a ``Resolve`` output and the branch goes on when ``resolved`` brings the
location; a branch fails over between destinations on a 503, a transport
error or Timer B (§4.3) as a new client transaction, blocks a destination
that did not answer, and CANCEL follows the destination that is live.
No sockets, no DNS: locations are handed in."""

from __future__ import annotations

from cluster.app.api import Application, Target
from cluster.dns.rfc3263 import Destination, Location
from cluster.sip import parse_uri
from cluster.sip.transaction.peer import Peer
from cluster.sip.transaction.timers import TimerConfig
from cluster.tu.outputs import Resolve

from .support import CALLER, EDGE, answer, destinations, forwarding, make_tu, request, requests, sent, statuses

CARRIER = "sip:carol@carrier.test"
ONE = Destination("UDP", "192.0.2.31", 5070)
TWO = Destination("UDP", "192.0.2.32", 5080)
BOTH = Location((ONE, TWO))


def resolves(out: list) -> list[Resolve]:
    return [o for o in out if isinstance(o, Resolve)]


def start(tu, *, call_id: str = "call-1@198.51.100.7", now: float = 0.0):
    out = tu.receive(request(uri=CARRIER, call_id=call_id, branch="z9hG4bK-" + call_id.split("@")[0]), CALLER, now)
    (resolve,) = resolves(out)
    assert resolve.target.host == "carrier.test" and resolve.target.port is None
    return resolve


def advance(tu, until: float) -> list:
    """Run every timer due up to ``until`` in order; the outputs of all."""
    out: list = []
    while (deadline := tu.next_deadline()) is not None and deadline <= until:
        out.extend(tu.handle_timer(deadline))
    return out


def to(out: list, destination: Destination) -> list:
    return [r for r, p in zip(requests(out, "INVITE"), destinations(out, "INVITE"))
            if (p.host, p.port) == (destination.host, destination.port)]


def test_the_branch_goes_to_the_first_destination_once_located():
    tu = make_tu(forwarding(CARRIER))
    resolve = start(tu)
    assert tu.in_flight() >= 1
    out = tu.resolved(resolve.ticket, BOTH, 0.1)
    (invite,) = requests(out, "INVITE")
    (peer,) = destinations(out, "INVITE")
    assert (peer.host, peer.port) == ("192.0.2.31", 5070)
    assert str(invite.uri) == CARRIER, "the Request-URI keeps the name"
    assert tu.resolved(resolve.ticket, BOTH, 0.2) == [], "a ticket is answered once"


def test_an_unknown_name_is_480_with_a_warning_and_a_dns_failure_504():
    for location, status, words in (
        (Location((), "nxdomain", "NAPTR carrier.test: nxdomain"), 480, "cannot resolve carrier.test"),
        (Location((), "timeout", "SRV _sip._udp.carrier.test: timeout", failed=True), 504,
         "DNS lookup for carrier.test failed"),
    ):
        tu = make_tu(forwarding(CARRIER))
        resolve = start(tu)
        out = tu.resolved(resolve.ticket, location, 0.5)
        (final,) = [m for m in sent(out) if getattr(m, "status", 0) >= 200]
        assert final.status == status
        warning = final.get("warning") or ""
        assert warning.startswith('399 192.0.2.1:5060 "') and words in warning
        assert tu.stats[f"unroutable_{status}"] == 1
        assert not tu.contexts


def test_a_503_fails_over_to_the_next_destination_with_a_new_branch():
    tu = make_tu(forwarding(CARRIER))
    resolve = start(tu)
    (first,) = requests(tu.resolved(resolve.ticket, BOTH, 0.1), "INVITE")
    out = answer(tu, first, 503, 0.5, tag="busy-server")
    assert statuses(out) == [], "the 503 is not the caller's answer while a destination is left"
    (second,) = requests(out, "INVITE")
    (peer,) = destinations(out, "INVITE")
    assert (peer.host, peer.port) == ("192.0.2.32", 5080)
    assert second.via.branch != first.via.branch, "a new client transaction (§4.3)"
    assert tu.stats["dns_failover"] == 1
    assert not tu.blocklist.blocked(ONE.key, 1.0), "a server that answered 503 is alive"
    assert statuses(answer(tu, second, 200, 0.6)) == [200]


def test_a_486_ends_the_branch_without_failover():
    tu = make_tu(forwarding(CARRIER))
    resolve = start(tu)
    (first,) = requests(tu.resolved(resolve.ticket, BOTH, 0.1), "INVITE")
    out = answer(tu, first, 486, 0.5)
    assert requests(out, "INVITE") == []
    assert statuses(out) == [486]


def test_timer_b_blocks_the_destination_and_the_next_call_skips_it():
    tu = make_tu(forwarding(CARRIER), timers=TimerConfig(t1=0.5))
    resolve = start(tu)
    (first,) = requests(tu.resolved(resolve.ticket, BOTH, 0.0), "INVITE")
    out = advance(tu, 32.0)  # Timer B = 64·T1 with no response at all
    assert len(to(out, ONE)) == 6, "Timer A retransmissions go to the original target"
    (second,) = to(out, TWO)
    assert second.via.branch != first.via.branch
    assert tu.blocklist.blocked(ONE.key, 33.0)
    # Another call to the same name, while ONE is blocked, starts at TWO.
    resolve = start(tu, call_id="call-2@198.51.100.7", now=40.0)
    out = tu.resolved(resolve.ticket, BOTH, 40.0)
    assert [p.host for p in destinations(out, "INVITE")] == ["192.0.2.32"]
    assert not tu.blocklist.blocked(ONE.key, 92.1), "blocked for block_time (60 s) only"


def test_every_destination_blocked_is_480_with_a_warning():
    tu = make_tu(forwarding(CARRIER))
    tu.blocklist.block(ONE.key, 0.0)
    tu.blocklist.block(TWO.key, 0.0)
    resolve = start(tu, now=1.0)
    out = tu.resolved(resolve.ticket, BOTH, 1.0)
    assert requests(out, "INVITE") == []
    (final,) = [m for m in sent(out) if getattr(m, "status", 0) >= 200]
    assert final.status == 480 and "blocked" in (final.get("warning") or "")


def test_cancel_follows_the_destination_that_is_live():
    tu = make_tu(forwarding(CARRIER), timers=TimerConfig(t1=0.5))
    resolve = start(tu)
    requests(tu.resolved(resolve.ticket, BOTH, 0.0), "INVITE")
    (second,) = to(advance(tu, 32.0), TWO)
    answer(tu, second, 180, 33.0)
    out = tu.receive(request("CANCEL", uri=CARRIER, branch="z9hG4bK-call-1"), CALLER, 34.0)
    (cancel,) = requests(out, "CANCEL")
    assert cancel.via.branch == second.via.branch, "§9.1: the live attempt's branch"
    assert destinations(out, "CANCEL")[0].host == "192.0.2.32"


def test_a_cancel_while_locating_ends_the_branch_with_487_when_dns_answers():
    tu = make_tu(forwarding(CARRIER))
    resolve = start(tu)
    out = tu.receive(request("CANCEL", uri=CARRIER, branch="z9hG4bK-call-1"), CALLER, 0.5)
    assert 200 in statuses(out)
    out = tu.resolved(resolve.ticket, BOTH, 1.0)
    assert requests(out, "INVITE") == [], "nothing goes out for a cancelled request"
    assert statuses(out) == [487]
    assert not tu.contexts


def test_a_late_answer_after_timer_c_is_dropped():
    tu = make_tu(forwarding(CARRIER, timeout=2.0))
    resolve = start(tu)
    assert statuses(tu.handle_timer(2.0)) == [408]
    assert tu.resolved(resolve.ticket, BOTH, 3.0) == []
    assert tu.stats["dns_answer_late"] == 1


def test_the_seed_is_the_same_for_a_retransmission_on_another_shard():
    one = start(make_tu(forwarding(CARRIER), shard="w1"))
    two = start(make_tu(forwarding(CARRIER), shard="w2"))
    other = start(make_tu(forwarding(CARRIER)), call_id="another-call")
    assert one.seed == two.seed != other.seed


def test_an_ack_for_a_2xx_through_a_named_route_is_sent_once_located():
    tu = make_tu(forwarding(CARRIER, methods=("INVITE", "ACK")))
    ack = request("ACK", uri="sip:carol@192.0.2.40:5090", to_tag="callee",
                  extra=("Route: <sip:proxy.carrier.test;lr>",))
    trusted = Peer("UDP", "127.0.0.1", 5060, EDGE)
    out = tu.receive(ack, trusted, 0.0)
    (resolve,) = resolves(out)
    assert resolve.target.host == "proxy.carrier.test"
    out = tu.resolved(resolve.ticket, BOTH, 0.1)
    assert [p.host for p in destinations(out, "ACK")] == ["192.0.2.31"]


# -- names everywhere: outbound proxy, Route, Path ---------------------------------

TRUSTED = Peer("UDP", "127.0.0.1", 5060, EDGE)


def relay_tu(outbound: str | None):
    from cluster.app.default import application
    from cluster.sip.transaction import TransactionLayer
    from cluster.tu import TransactionUser
    from nodes.worker.services import Services

    from .support import US, WALL
    services = Services(domains=["example.com"], trusted=["127.0.0.0/8"], nonce_secret=b"k" * 32,
                        nonce_ttl=300, locations=None, users=None, clock=lambda: WALL,
                        outbound_proxy=outbound)
    services.learn_advertise(US)
    return TransactionUser(application, TransactionLayer(TimerConfig()), services, shard="w1", salt="t/")


def foreign(method: str = "INVITE", **kw):
    message = request(method, uri=CARRIER, **kw)
    message.set("From", "<sip:caller@caller.test>;tag=a1")
    return message


def test_a_named_outbound_proxy_is_located_and_stays_the_route():
    tu = relay_tu("sip:sbc.example.net:5070")
    (resolve,) = resolves(tu.receive(foreign(), TRUSTED, 0.0))
    assert (resolve.target.host, resolve.target.port) == ("sbc.example.net", 5070)
    out = tu.resolved(resolve.ticket, Location((Destination("UDP", "192.0.2.50", 5070),)), 0.1)
    (invite,) = requests(out, "INVITE")
    assert str(invite.uri) == CARRIER
    assert "sbc.example.net:5070" in (invite.get("route") or "")
    assert [(p.host, p.port) for p in destinations(out, "INVITE")] == [("192.0.2.50", 5070)]


def test_an_in_dialog_request_follows_a_named_route():
    tu = relay_tu(None)
    bye = foreign("BYE", to_tag="callee", extra=("Route: <sip:edge.carrier.test;lr>",))
    bye.uri = parse_uri("sip:carol@192.0.2.60:5090")
    (resolve,) = resolves(tu.receive(bye, TRUSTED, 0.0))
    assert resolve.target.host == "edge.carrier.test"
    out = tu.resolved(resolve.ticket, BOTH, 0.1)
    assert [p.host for p in destinations(out, "BYE")] == ["192.0.2.31"]


def test_a_named_path_is_located():
    app = Application("path")

    @app.request("INVITE")
    def route(call):
        return call.proxy([Target(parse_uri("sip:bob@192.0.2.70:5060"), path=("<sip:pcscf.example.net;lr>",))])
    tu = make_tu(app)
    (resolve,) = resolves(tu.receive(request(), CALLER, 0.0))
    assert resolve.target.host == "pcscf.example.net"
    out = tu.resolved(resolve.ticket, BOTH, 0.1)
    (invite,) = requests(out, "INVITE")
    assert str(invite.uri) == "sip:bob@192.0.2.70:5060" and "pcscf.example.net" in (invite.get("route") or "")
    assert destinations(out, "INVITE")[0].host == "192.0.2.31"


def test_a_cancel_on_a_shard_without_the_invite_goes_where_the_invite_went():
    """§16.10/§16.11 after a failover: the shard that now owns the Call-ID
    never saw the INVITE; it locates the same name with the same seed and
    sends the CANCEL to the INVITE's destination with the INVITE's branch."""
    first = make_tu(forwarding(CARRIER), shard="w1")
    resolve = start(first)
    out = first.resolved(resolve.ticket, BOTH, 0.1)
    (invite,) = requests(out, "INVITE")
    (invite_peer,) = destinations(out, "INVITE")
    second = make_tu(forwarding(CARRIER), shard="w2")
    cancel = request("CANCEL", uri=CARRIER, branch="z9hG4bK-call-1")
    out = second.receive(cancel, CALLER, 1.0)
    assert 200 in statuses(out)
    (resolve,) = resolves(out)
    out = second.resolved(resolve.ticket, BOTH, 1.1)
    forwarded = requests(out, "CANCEL")
    assert forwarded[0].via.branch == invite.via.branch
    assert destinations(out, "CANCEL")[0].host == invite_peer.host
    assert len(forwarded) == 2, "and one to the destination a failover would have tried"


def test_a_delivered_location_is_answered_at_the_next_timer_run():
    """The worker delivers a location from its lookup task and wakes its
    timer task: the TU is then due at once and carries the branch on there."""
    tu = make_tu(forwarding(CARRIER))
    resolve = start(tu)
    assert tu.next_deadline() != float("-inf")
    tu.locating.deliver(resolve.ticket, BOTH)
    assert tu.next_deadline() == float("-inf")
    out = tu.handle_timer(0.2)
    assert [p.host for p in destinations(out, "INVITE")] == ["192.0.2.31"]
    assert tu.next_deadline() != float("-inf")


def test_a_runtime_takes_delivered_locations_with_their_scopes():
    """The worker answers each delivered location in the scope it came
    with (the waiting request's trace context): the TU keeps it opaque."""
    tu = make_tu(forwarding(CARRIER))
    resolve = start(tu)
    scope = object()
    tu.locating.deliver(resolve.ticket, BOTH, scope)
    assert tu.locating.take_delivered() == [(resolve.ticket, BOTH, scope)]
    assert not tu.locating.delivered and tu.next_deadline() != float("-inf")
    out = tu.resolved(resolve.ticket, BOTH, 0.2)
    assert [p.host for p in destinations(out, "INVITE")] == ["192.0.2.31"]
