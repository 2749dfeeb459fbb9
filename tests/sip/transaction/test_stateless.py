"""Stateless proxy helpers (RFC 3261 §16.11, §16.7 step 3, §18.2.2)."""

from __future__ import annotations

from cluster.sip.transaction import (
    Peer, branch_for, forward_response_statelessly, response_destination, trying,
)
from cluster.sip.via import parse_via

from .messages import request, response


def test_branch_is_deterministic_and_rfc3261():
    first = branch_for(request("INVITE"))
    assert first.startswith("z9hG4bK") and len(first) > 7
    assert branch_for(request("INVITE")) == first  # a retransmission, any shard


def test_branch_depends_on_the_incoming_key_and_salt():
    base = branch_for(request("INVITE"))
    assert branch_for(request("INVITE", branch="z9hG4bKother")) != base
    assert branch_for(request("INVITE", sent_by="other.example.com")) != base
    assert branch_for(request("OPTIONS")) != base
    assert branch_for(request("INVITE"), salt="cluster-b") != base


def test_cancel_and_non_2xx_ack_get_the_invites_branch():
    invite = request("INVITE")
    assert branch_for(request("CANCEL")) == branch_for(invite)
    ack = request("ACK", to_tag="callee")  # same branch: ACK for a non-2xx
    assert branch_for(ack) == branch_for(invite)


def test_ack_for_2xx_gets_its_own_branch():
    ack = request("ACK", branch="z9hG4bKnew", to_tag="callee")
    assert branch_for(ack) != branch_for(request("INVITE"))


def test_rfc2543_branch_uses_the_request_fields():
    invite = request("INVITE", branch=None)
    base = branch_for(invite)
    assert base.startswith("z9hG4bK")
    assert branch_for(request("INVITE", branch=None)) == base
    assert branch_for(request("INVITE", branch=None, seq=2)) != base
    assert branch_for(request("INVITE", branch=None, uri="sip:carol@example.com")) != base
    assert branch_for(request("INVITE", branch=None, call_id="x@y")) != base
    assert branch_for(request("INVITE", branch=None, from_tag="other")) != base
    # ACK (with our response's To tag) and CANCEL follow the INVITE.
    assert branch_for(request("ACK", branch=None, to_tag="t9")) == base
    assert branch_for(request("CANCEL", branch=None)) == base
    # Outside the INVITE family the To tag tells in-dialog requests apart.
    bye = branch_for(request("BYE", branch=None, to_tag="a"))
    assert branch_for(request("BYE", branch=None, to_tag="b")) != bye


def test_trying_has_no_to_tag_and_copies_timestamp():
    req = request("INVITE", headers=("Timestamp: 54.2 0.1",))
    hundred = trying(req)
    assert hundred.status == 100 and hundred.to.tag is None
    assert hundred.get("Timestamp") == "54.2 0.1"
    assert hundred.call_id == req.call_id and hundred.cseq == req.cseq


def test_forward_response_pops_our_via_and_targets_the_next():
    req = request(
        "INVITE", sent_by="proxy.cluster.example:5060",
        extra_vias=("SIP/2.0/UDP client.example.com:5070;branch=z9hG4bKc1;received=192.0.2.7",),
    )
    resp = response(req, 180)
    forwarded, hop = forward_response_statelessly(resp)
    assert [v.host for v in forwarded.vias] == ["client.example.com"]
    assert len(resp.vias) == 2  # the original is untouched
    assert hop == Peer("UDP", "192.0.2.7", 5070)


def test_forward_response_for_us_returns_none():
    assert forward_response_statelessly(response(request("OPTIONS"), 200)) is None


def dest(via: str) -> Peer:
    return response_destination(parse_via(via))


def test_destination_rules_of_section_18_2_2():
    # sent-by, default ports
    assert dest("SIP/2.0/UDP a.example.com;branch=z9hG4bK1") == Peer("UDP", "a.example.com", 5060)
    assert dest("SIP/2.0/TLS a.example.com;branch=z9hG4bK1") == Peer("TLS", "a.example.com", 5061)
    # received, with the sent-by port
    assert dest("SIP/2.0/UDP a.example.com:5070;received=192.0.2.1") == Peer("UDP", "192.0.2.1", 5070)
    # RFC 3581 rport
    assert dest("SIP/2.0/UDP a.example.com;received=192.0.2.1;rport=40000") == \
        Peer("UDP", "192.0.2.1", 40000)
    # maddr
    assert dest("SIP/2.0/UDP a.example.com;maddr=239.255.255.1;ttl=1") == \
        Peer("UDP", "239.255.255.1", 5060)
    # reliable: received or sent-by host, sent-by port (rport is a source port)
    assert dest("SIP/2.0/TCP a.example.com:5062;received=192.0.2.1;rport=40000") == \
        Peer("TCP", "192.0.2.1", 5062)
    # IPv6 reference without brackets
    assert dest("SIP/2.0/UDP [2001:db8::1]:5080") == Peer("UDP", "2001:db8::1", 5080)


def test_peer_context_does_not_take_part_in_equality():
    assert Peer("TCP", "192.0.2.1", 5060, context="a") == Peer("TCP", "192.0.2.1", 5060, context="b")
    assert Peer("UDP", "h", 1).reliable is False
    assert all(Peer(t, "h", 1).reliable for t in ("TCP", "TLS", "WS", "WSS", "SCTP"))

