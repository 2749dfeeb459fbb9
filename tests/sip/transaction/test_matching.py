"""Request and response matching (RFC 3261 §17.1.3, §17.2.3, §9.2, §8.2.2.2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.sip import Request, Response, make_response, parse_message
from cluster.sip.transaction import (
    AckReceived, CancelReceived, RequestReceived, ResponseReceived, Send, StrayResponse,
    TransactionLayer,
)

from .messages import SERVER, TCP, UDP, ack_for, of_type, request, response, sends

TORTURE = Path(__file__).parents[2] / "conformance" / "rfc4475"


@pytest.fixture
def layer() -> TransactionLayer:
    return TransactionLayer()


def torture(name: str) -> Request:
    message = parse_message((TORTURE / f"{name}.dat").read_bytes())
    assert isinstance(message, Request)
    return message


# -- server side ------------------------------------------------------------------------

def test_retransmitted_request_is_absorbed_not_passed_up(layer):
    req = request("OPTIONS")
    layer.receive(req, UDP, 0.0)
    retransmission = request("OPTIONS")  # separately parsed copy
    assert of_type(layer.receive(retransmission, UDP, 0.5), RequestReceived) == []
    assert len(layer) == 1


def test_same_branch_from_another_sent_by_is_another_transaction(layer):
    layer.receive(request("OPTIONS"), UDP, 0.0)
    other = request("OPTIONS", sent_by="elsewhere.example.org")
    assert of_type(layer.receive(other, UDP, 0.1), RequestReceived)
    assert len(layer) == 2


def test_same_branch_with_another_method_is_another_transaction(layer):
    layer.receive(request("INVITE"), UDP, 0.0)
    assert of_type(layer.receive(request("OPTIONS"), UDP, 0.1), RequestReceived)
    assert len(layer) == 2


def test_ack_for_non_2xx_is_absorbed_by_its_invite_transaction(layer):
    invite = request("INVITE")
    layer.receive(invite, UDP, 0.0)
    busy = response(invite, 486)
    layer.send_response(busy, 0.1)
    assert layer.receive(ack_for(invite, busy), UDP, 0.2) == []
    assert layer.counters.stray_acks == 0


def test_ack_for_2xx_matches_no_transaction_and_goes_to_the_tu(layer):
    invite = request("INVITE")
    layer.receive(invite, UDP, 0.0)
    ok = response(invite, 200)
    layer.send_response(ok, 0.1)
    ack = ack_for(invite, ok, branch="z9hG4bKack-for-2xx")  # §13.2.2.4: a new branch
    assert layer.receive(ack, UDP, 0.2) == [AckReceived(ack, UDP, None)]
    assert len(layer) == 1  # an ACK never creates a transaction


def test_cancel_is_matched_to_the_invite_it_cancels(layer):
    invite = request("INVITE")
    layer.receive(invite, UDP, 0.0)
    cancel = request("CANCEL")
    (event,) = layer.receive(cancel, UDP, 1.0)
    invite_key = ("s", "z9hG4bKabc1", "client.example.com", 5060, "INVITE")
    cancel_key = ("s", "z9hG4bKabc1", "client.example.com", 5060, "CANCEL")
    assert event == CancelReceived(invite_key, cancel, UDP, cancel_key)
    # The CANCEL has its own transaction, answered by the TU...
    ok = response(cancel, 200)
    assert layer.send_response(ok, 1.1) == [Send(ok, UDP, cancel_key)]
    # ...and the INVITE is answered 487 on its own.
    terminated = response(invite, 487)
    assert layer.send_response(terminated, 1.1) == [Send(terminated, UDP, invite_key)]
    # Retransmitted CANCEL: the NIST resends its 200, no new event.
    assert layer.receive(cancel, UDP, 1.5) == [Send(ok, UDP, cancel_key, retransmission=True)]


def test_cancel_without_invite_is_reported_with_no_target(layer):
    cancel = request("CANCEL", branch="z9hG4bKunknown")
    (event,) = layer.receive(cancel, UDP, 0.0)
    assert isinstance(event, CancelReceived) and event.key is None
    assert layer.state(event.cancel_key) == "Trying"


def test_rfc2543_request_is_matched_by_its_fields(layer):
    invite = torture("inv2543")
    (trying, event) = layer.receive(invite, UDP, 0.0)
    assert isinstance(event, RequestReceived) and event.key[0] == "2543"
    # Retransmission: same Request-URI, tags, Call-ID, CSeq and top Via.
    again = torture("inv2543")
    assert layer.receive(again, UDP, 0.5) == [Send(trying.message, UDP, event.key, True)]
    # The TU's response finds the transaction through the same fields.
    busy = make_response(invite, 486, to_tag="x1")
    assert sends(layer.send_response(busy, 0.6))[0].message is busy
    # The ACK carries our To tag and the same fields: absorbed.
    ack = parse_message(
        (TORTURE / "inv2543.dat").read_bytes()
        .replace(b"INVITE sip:", b"ACK sip:").replace(b"CSeq: 56 INVITE", b"CSeq: 56 ACK")
        .replace(b"user=phone\r\nCall-ID", b"user=phone;tag=x1\r\nCall-ID")
    )
    assert ack.to.tag == "x1"
    assert layer.receive(ack, UDP, 0.7) == []
    assert layer.state(event.key) == "Confirmed"


def test_rfc2543_request_with_another_request_uri_is_not_a_retransmission(layer):
    invite = request("INVITE", branch=None)
    (_, event) = layer.receive(invite, UDP, 0.0)
    other = request("INVITE", branch=None, uri="sip:carol@example.com")
    assert layer.receive(other, UDP, 0.1) == []  # same key, different request: absorbed
    assert layer.counters.illegal_inputs == 1
    assert len(layer) == 1


def test_rfc2543_ack_with_a_foreign_to_tag_goes_to_the_tu(layer):
    invite = request("INVITE", branch=None)
    layer.receive(invite, UDP, 0.0)
    layer.send_response(response(invite, 486, to_tag="mine"), 0.1)
    ack = request("ACK", branch=None, to_tag="someone-else")
    assert isinstance(layer.receive(ack, UDP, 0.2)[0], AckReceived)


def test_rfc2543_cancel_is_matched(layer):
    invite = request("INVITE", branch=None)
    (_, created) = layer.receive(invite, UDP, 0.0)
    (event,) = layer.receive(request("CANCEL", branch=None), UDP, 0.5)
    assert event.key == created.key


def test_bare_magic_cookie_is_treated_as_rfc2543(layer):
    # RFC 4475 §3.1.2.13: "z9hG4bK" alone identifies nothing.
    (event,) = layer.receive(torture("badbranch"), UDP, 0.0)
    assert event.key[0] == "2543"


def test_merged_request_is_answered_482_when_enabled():
    layer = TransactionLayer(reject_merged=True)
    first = request("INVITE", branch="z9hG4bKpath1")
    layer.receive(first, UDP, 0.0)
    merged = request("INVITE", branch="z9hG4bKpath2", sent_by="proxy2.example.com")
    actions = layer.receive(merged, UDP, 0.1)
    (reply,) = sends(actions)
    assert reply.message.status == 482 and reply.destination == UDP
    assert of_type(actions, RequestReceived) == []
    assert layer.counters.merged_requests == 1
    # Its retransmission gets the same 482 from the merged request's own transaction.
    assert layer.receive(merged, UDP, 0.6)[0].message is reply.message


def test_merged_request_check_ignores_in_dialog_requests_and_other_methods():
    layer = TransactionLayer(reject_merged=True)
    layer.receive(request("INVITE", branch="z9hG4bKp1"), UDP, 0.0)
    assert of_type(layer.receive(request("CANCEL", branch="z9hG4bKp2"), UDP, 0.1), CancelReceived)
    layer.receive(request("BYE", branch="z9hG4bKb1", to_tag="t", seq=2), UDP, 0.2)
    bye = request("BYE", branch="z9hG4bKb2", to_tag="t", seq=2)
    assert of_type(layer.receive(bye, UDP, 0.3), RequestReceived)


def test_merged_requests_pass_by_default():
    layer = TransactionLayer()
    layer.receive(request("INVITE", branch="z9hG4bKpath1"), UDP, 0.0)
    second = request("INVITE", branch="z9hG4bKpath2", sent_by="proxy2.example.com")
    assert of_type(layer.receive(second, UDP, 0.1), RequestReceived)


def test_merged_index_forgets_terminated_transactions():
    layer = TransactionLayer(reject_merged=True)
    first = request("OPTIONS", branch="z9hG4bKa")
    layer.receive(first, UDP, 0.0)
    assert layer._merged
    layer.send_response(response(first, 200), 0.1)
    layer.handle_timer(40.0)  # Timer J
    assert len(layer) == 0 and layer._merged == {}
    later = request("OPTIONS", branch="z9hG4bKb")
    assert of_type(layer.receive(later, UDP, 41.0), RequestReceived)


# -- client side ------------------------------------------------------------------------

def test_response_is_matched_by_branch_and_cseq_method(layer):
    invite = request("INVITE")
    key, _ = layer.send_request(invite, SERVER, 0.0)
    ok_for_cancel = response(request("CANCEL"), 200)
    (event,) = layer.receive(ok_for_cancel, SERVER, 0.1)
    assert isinstance(event, StrayResponse)  # no CANCEL transaction was started
    ringing = response(invite, 180)
    assert layer.receive(ringing, SERVER, 0.2) == [ResponseReceived(key, ringing)]


def test_response_for_an_unknown_branch_is_stray(layer):
    stray = response(request("INVITE", branch="z9hG4bKgone"), 200)
    assert layer.receive(stray, SERVER, 0.0) == [StrayResponse(stray, SERVER)]
    assert layer.counters.stray_responses == 1


def test_messages_without_required_fields_are_counted_not_raised(layer):
    bare_request = Request("OPTIONS", "sip:bob@example.com")
    bare_response = Response(200, "OK")
    assert layer.receive(bare_request, UDP, 0.0) == []
    assert layer.receive(bare_response, UDP, 0.0) == []
    assert layer.send_response(bare_response, 0.0) == []
    assert layer.counters.malformed == 3


def test_rfc2543_cancel_for_another_request_uri_targets_nothing(layer):
    layer.receive(request("INVITE", branch=None), UDP, 0.0)
    cancel = request("CANCEL", branch=None, uri="sip:carol@example.com")
    (event,) = layer.receive(cancel, UDP, 0.5)
    assert isinstance(event, CancelReceived) and event.key is None


def test_merged_non_invite_over_tcp_is_answered_and_ends_at_once():
    layer = TransactionLayer(reject_merged=True)
    layer.receive(request("MESSAGE", branch="z9hG4bKm1", transport="TCP"), TCP, 0.0)
    merged = request("MESSAGE", branch="z9hG4bKm2", transport="TCP", sent_by="p2.example.com")
    actions = layer.receive(merged, TCP, 0.1)
    assert [a.message.status for a in sends(actions)] == [482]
    assert len(layer) == 1  # only the original remains


def test_request_and_peer_of_a_transaction(layer):
    invite = request("INVITE")
    client_key, _ = layer.send_request(invite, SERVER, 0.0)
    assert layer.request_of(client_key) is invite and layer.peer_of(client_key) == SERVER
    server_invite = request("INVITE", branch="z9hG4bKin")
    (_, event) = layer.receive(server_invite, UDP, 0.0)
    assert layer.request_of(event.key) is server_invite and layer.peer_of(event.key) == UDP
    assert layer.request_of(("s", "z9hG4bKnone", "h", None, "INVITE")) is None
    assert layer.peer_of(("c", "z9hG4bKnone", "INVITE")) is None
