"""CANCEL and the ACK of a non-2xx response on a shard without the INVITE's
context (RFC 3261 §9.1, §16.10, §16.11, §17.1.1.3; RFC 3263 §4.3): the
INVITE may have failed over to a later destination or set member, so each
goes to every destination and branch the INVITE may have tried, with the
Via branch that attempt had; the next hop matches the live one. Two TUs
stand for the shard that forwarded the INVITE and the one that took the
Call-ID over. No sockets, no DNS: locations are handed in."""

from __future__ import annotations

from cluster.app.api import Target
from cluster.dns.rfc3263 import Destination, Location
from cluster.proxy.context import Alternatives
from cluster.proxy.failover import attempt_salt
from cluster.sip import make_response, parse_uri
from cluster.sip.transaction.peer import Peer
from cluster.tu.cancelling import invite_branches
from cluster.tu.outputs import Resolve

from .support import CALLER, EDGE, answer, destinations, forwarding, make_tu, request, requests, sent, statuses
from .test_dispatch import GW1, GW2, dispatcher, invite_to, to_set

CARRIER = "sip:carol@carrier.test"
ONE = Destination("UDP", "192.0.2.31", 5070)
TWO = Destination("UDP", "192.0.2.32", 5080)
THREE = Destination("UDP", "192.0.2.33", 5090)
ALL = Location((ONE, TWO, THREE))


def resolve_of(out: list) -> Resolve:
    (resolve,) = [o for o in out if isinstance(o, Resolve)]
    return resolve


def failed_over_invite(*, blocked_first: bool = False):
    """Shard w1 forwards an INVITE to carrier.test; ONE answers 503 and the
    branch fails over to TWO (or ONE is blocked and TWO is the first
    attempt). Returns (the INVITE that reached TWO, w1)."""
    first = make_tu(forwarding(CARRIER, methods=("INVITE", "CANCEL", "ACK")), shard="w1")
    if blocked_first:
        first.blocklist.block(ONE.key, 0.0)
    out = first.receive(request(uri=CARRIER, branch="z9hG4bK-call-1"), CALLER, 0.0)
    out = first.resolved(resolve_of(out).ticket, ALL, 0.1)
    (invite,) = requests(out, "INVITE")
    if not blocked_first:
        out = answer(first, invite, 503, 0.2, tag="overloaded")
        (invite,) = requests(out, "INVITE")
    assert destinations(out, "INVITE")[0].host == TWO.host
    return invite, first


def taking_over():
    return make_tu(forwarding(CARRIER, methods=("INVITE", "CANCEL", "ACK")), shard="w2")


def by_host(out: list, method: str) -> dict[str, str]:
    return {p.host: m.via.branch for m, p in zip(requests(out, method), destinations(out, method))}


def test_a_cancel_without_context_reaches_the_destination_the_invite_failed_over_to():
    live, _ = failed_over_invite()
    second = taking_over()
    out = second.receive(request("CANCEL", uri=CARRIER, branch="z9hG4bK-call-1"), CALLER, 1.0)
    assert 200 in statuses(out)
    out = second.resolved(resolve_of(out).ticket, ALL, 1.1)
    branches = by_host(out, "CANCEL")
    assert set(branches) == {ONE.host, TWO.host, THREE.host}, "every destination the INVITE could try"
    assert branches[TWO.host] == live.via.branch, "§9.1: the live attempt's branch, at its destination"
    assert len(set(branches.values())) == 3, "each attempt had a branch of its own"
    assert second.stats["cancel_without_context_forwarded"] == 3


def test_the_attempt_branch_is_the_destination_place_not_the_count_of_attempts():
    # ONE blocked on the INVITE's shard: TWO got the first transaction, with
    # the branch of the second place, which a shard without ONE blocked derives.
    live, _ = failed_over_invite(blocked_first=True)
    second = taking_over()
    out = second.receive(request("CANCEL", uri=CARRIER, branch="z9hG4bK-call-1"), CALLER, 1.0)
    out = second.resolved(resolve_of(out).ticket, ALL, 1.1)
    assert by_host(out, "CANCEL")[TWO.host] == live.via.branch


def test_destinations_blocked_here_get_no_copy():
    second = taking_over()
    second.blocklist.block(THREE.key, 0.5)
    out = second.receive(request("CANCEL", uri=CARRIER, branch="z9hG4bK-call-1"), CALLER, 1.0)
    out = second.resolved(resolve_of(out).ticket, ALL, 1.1)
    assert set(by_host(out, "CANCEL")) == {ONE.host, TWO.host}


def test_the_ack_of_a_non_2xx_without_the_transaction_carries_the_live_attempts_branch():
    """§17.1.1.3: the callee's 486 reached the caller statelessly through
    the new shard; the caller's ACK must reach TWO with the INVITE's branch,
    or TWO's server transaction retransmits the 486 until Timer H."""
    live, _ = failed_over_invite()
    busy = make_response(live, 486, to_tag="callee")
    ack = request("ACK", uri=CARRIER, branch="z9hG4bK-call-1", to_tag=busy.to.tag)
    second = taking_over()
    out = second.receive(ack, CALLER, 1.0)
    assert statuses(out) == []
    out = second.resolved(resolve_of(out).ticket, ALL, 1.1)
    branches = by_host(out, "ACK")
    assert branches[TWO.host] == live.via.branch
    assert set(branches) == {ONE.host, TWO.host, THREE.host}
    (to_two,) = [m for m, p in zip(requests(out, "ACK"), destinations(out, "ACK")) if p.host == TWO.host]
    assert to_two.to.tag == "callee" and to_two.via.host == live.via.host, "the INVITE's sent-by too"
    assert second.stats["ack_without_transaction_forwarded"] == 3


def test_the_ack_of_a_response_we_made_ends_here():
    # A 404 of ours (no such user): its ACK, arriving after the server
    # transaction ended, is not sent anywhere.
    tu = taking_over()
    invite = request(uri="sip:nobody@example.com", branch="z9hG4bK-ours")
    ours = make_response(invite, 404)
    ack = request("ACK", uri="sip:nobody@example.com", branch="z9hG4bK-ours", to_tag=ours.to.tag)
    assert sent(tu.receive(ack, CALLER, 0.0)) == []
    assert tu.stats["ack_for_our_response"] == 1


def test_an_ack_for_a_2xx_along_a_route_set_is_still_loose_routed_once():
    tu = taking_over()
    ack = request("ACK", uri="sip:carol@192.0.2.40:5090", to_tag="callee",
                  extra=("Route: <sip:192.0.2.41:5060;lr>",))
    out = tu.receive(ack, Peer("UDP", "127.0.0.1", 5060, EDGE), 0.0)
    assert [(p.host, p.port) for p in destinations(out, "ACK")] == [("192.0.2.41", 5060)]


def test_a_cancel_follows_a_destination_set_failover_to_the_next_member():
    first = make_tu(to_set(), dispatcher=dispatcher(), shard="w1")
    (invite,) = invite_to(first)
    (live,) = requests(answer(first, invite, 503, 1.0), "INVITE")
    second = make_tu(to_set(), dispatcher=dispatcher(), shard="w2")
    cancel = request("CANCEL", uri="sip:carol@carrier.example", branch="z9hG4bK-call-1")
    out = second.receive(cancel, CALLER, 2.0)
    branches = by_host(out, "CANCEL")
    assert branches["192.0.2.32"] == live.via.branch, "the second member's branch (index 1)"
    assert branches["192.0.2.31"] == invite.via.branch
    # The 3rd member too: the INVITE may have failed over twice.
    assert "192.0.2.33" in branches


def test_invite_branches_numbers_them_as_the_context_starts_them():
    a, b, c = (Target(parse_uri(f"sip:{h}")) for h in ("a.test", "b.test", "c.test"))
    members = Alternatives((parse_uri(GW1), parse_uri(GW2)), "set")
    gw1, gw2 = Target(parse_uri(GW1)), Target(parse_uri(GW2))
    assert invite_branches([(a, a.uri), (b, b.uri)], parallel=True) == [(0, a), (1, b)]
    # Sequential, or one slot: one after the other, a set's members in turn.
    assert invite_branches([(gw1, members), (c, c.uri)], parallel=False) == [(0, gw1), (1, gw2), (2, c)]
    assert invite_branches([(gw1, members)], parallel=True) == [(0, gw1), (1, gw2)]
    # Parallel: the slots first; a later member at any index it could have had.
    assert invite_branches([(gw1, members), (c, c.uri)], parallel=True) == [(0, gw1), (1, c), (2, gw2)]


def test_attempt_salt_keeps_the_first_attempt_on_the_branch_own_salt():
    assert attempt_salt("s/", 0, 0) == "s/0"
    assert attempt_salt("s/", 2, 1) == "s/2.2" != attempt_salt("s/", 2, 2)

