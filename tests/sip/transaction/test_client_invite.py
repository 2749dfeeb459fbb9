"""Every transition of the INVITE client transaction (RFC 3261 Figure 5, RFC 6026 §7.2)."""

from __future__ import annotations

import pytest

from cluster.sip.transaction import (
    ResponseReceived, Send, TimerConfig, TransactionLayer, TransactionTerminated,
    TransactionTimeout, TransportError,
)

from .messages import SERVER, SERVER_TCP, of_type, request, response, run_timers, sends


@pytest.fixture
def layer() -> TransactionLayer:
    return TransactionLayer()


@pytest.fixture
def invite():
    return request(
        "INVITE", headers=("Route: <sip:p1.example.com;lr>", "Route: <sip:p2.example.com;lr>"),
        extra_vias=("SIP/2.0/UDP upstream.example.com;branch=z9hG4bKup",),
    )


def start(layer, invite, peer=SERVER, now=0.0):
    key, actions = layer.send_request(invite, peer, now)
    return key, actions


def test_invite_from_tu_sends_invite_and_enters_calling(layer, invite):
    key, actions = start(layer, invite)
    assert key == ("c", "z9hG4bKabc1", "INVITE")
    assert actions == [Send(invite, SERVER, key)]
    assert layer.state(key) == "Calling"


def test_calling_timer_a_resends_invite(layer, invite):
    key, _ = start(layer, invite)
    assert layer.handle_timer(0.5) == [Send(invite, SERVER, key, retransmission=True)]
    assert layer.state(key) == "Calling"


def test_calling_timer_b_informs_tu_and_terminates(layer, invite):
    key, _ = start(layer, invite, SERVER_TCP)
    assert layer.handle_timer(32.0) == [TransactionTimeout(key, "B"), TransactionTerminated(key)]
    assert layer.state(key) is None


def test_calling_transport_error_informs_tu_and_terminates(layer, invite):
    key, _ = start(layer, invite)
    assert layer.transport_error(key, 0.1) == [TransportError(key), TransactionTerminated(key)]
    assert layer.state(key) is None
    assert layer.next_deadline() is None  # A and B stopped


def test_calling_1xx_to_tu_enters_proceeding_and_stops_retransmitting(layer, invite):
    key, _ = start(layer, invite)
    ringing = response(invite, 180)
    assert layer.receive(ringing, SERVER, 0.2) == [ResponseReceived(key, ringing)]
    assert layer.state(key) == "Proceeding"
    assert sends(run_timers(layer, 100.0)) == []  # no A; B no longer applies


def test_calling_2xx_to_tu_enters_accepted(layer, invite):
    key, _ = start(layer, invite)
    ok = response(invite, 200)
    assert layer.receive(ok, SERVER, 0.2) == [ResponseReceived(key, ok)]
    assert layer.state(key) == "Accepted"
    assert not sends(layer.handle_timer(1.0))  # A stopped


def test_calling_300_699_sends_ack_passes_response_and_enters_completed(layer, invite):
    key, _ = start(layer, invite)
    busy = response(invite, 486)
    actions = layer.receive(busy, SERVER, 0.2)
    (ack_send,) = sends(actions)
    assert of_type(actions, ResponseReceived) == [ResponseReceived(key, busy)]
    assert ack_send.destination == SERVER and ack_send.key == key
    assert layer.state(key) == "Completed"


def test_the_ack_for_a_non_2xx_follows_section_17_1_1_3(layer, invite):
    start(layer, invite)
    busy = response(invite, 486, to_tag="callee")
    (ack_send,) = sends(layer.receive(busy, SERVER, 0.2))
    ack = ack_send.message
    assert ack.method == "ACK" and ack.uri == invite.uri
    assert [str(v) for v in ack.vias] == [str(invite.via)]  # only the top Via
    assert ack.cseq.seq == invite.cseq.seq and ack.cseq.method == "ACK"
    assert ack.to.tag == "callee"
    assert ack.from_ == invite.from_ and ack.call_id == invite.call_id
    assert [str(r) for r in ack.routes] == [str(r) for r in invite.routes]
    assert ack.max_forwards == 70 and ack.body == b""
    assert b"Content-Length: 0" in ack.to_bytes()


def test_proceeding_1xx_to_tu_stays_in_proceeding(layer, invite):
    key, _ = start(layer, invite)
    layer.receive(response(invite, 100), SERVER, 0.1)
    progress = response(invite, 183)
    assert layer.receive(progress, SERVER, 0.2) == [ResponseReceived(key, progress)]
    assert layer.state(key) == "Proceeding"


def test_proceeding_2xx_to_tu_enters_accepted(layer, invite):
    key, _ = start(layer, invite)
    layer.receive(response(invite, 180), SERVER, 0.1)
    ok = response(invite, 200)
    assert layer.receive(ok, SERVER, 5.0) == [ResponseReceived(key, ok)]
    assert layer.state(key) == "Accepted"


def test_proceeding_300_699_sends_ack_and_enters_completed(layer, invite):
    key, _ = start(layer, invite)
    layer.receive(response(invite, 180), SERVER, 0.1)
    actions = layer.receive(response(invite, 603), SERVER, 5.0)
    assert [s.message.method for s in sends(actions)] == ["ACK"]
    assert layer.state(key) == "Completed"


def test_proceeding_timer_c_informs_tu_then_waits_64_t1(invite):
    layer = TransactionLayer(TimerConfig(c=200.0))
    key, _ = start(layer, invite)
    layer.receive(response(invite, 180), SERVER, 1.0)
    assert layer.handle_timer(201.0) == [TransactionTimeout(key, "C")]
    assert layer.state(key) == "Proceeding"
    # The 487 answering the TU's CANCEL still gets its ACK.
    actions = layer.receive(response(invite, 487), SERVER, 202.0)
    assert [s.message.method for s in sends(actions)] == ["ACK"]


def test_completed_300_699_resends_ack_without_passing_it_up(layer, invite):
    key, _ = start(layer, invite)
    busy = response(invite, 486)
    (first_ack,) = sends(layer.receive(busy, SERVER, 0.2))
    assert layer.receive(busy, SERVER, 0.9) == [
        Send(first_ack.message, SERVER, key, retransmission=True)
    ]
    assert layer.state(key) == "Completed"
    assert layer.counters.retransmissions_absorbed == 1


def test_completed_timer_d_terminates(layer, invite):
    key, _ = start(layer, invite)
    layer.receive(response(invite, 486), SERVER, 0.2)
    assert layer.handle_timer(32.2) == [TransactionTerminated(key)]


def test_completed_transport_error_informs_tu_and_terminates(layer, invite):
    key, _ = start(layer, invite)
    layer.receive(response(invite, 486), SERVER, 0.2)
    assert layer.transport_error(key, 0.3) == [TransportError(key), TransactionTerminated(key)]


def test_accepted_2xx_to_tu(layer, invite):
    key, _ = start(layer, invite)
    layer.receive(response(invite, 200, to_tag="a"), SERVER, 0.2)
    retransmitted = response(invite, 200, to_tag="a")
    forked = response(invite, 200, to_tag="b")
    assert layer.receive(retransmitted, SERVER, 1.0) == [ResponseReceived(key, retransmitted)]
    assert layer.receive(forked, SERVER, 1.5) == [ResponseReceived(key, forked)]
    assert layer.state(key) == "Accepted"


def test_accepted_timer_m_terminates(layer, invite):
    key, _ = start(layer, invite)
    layer.receive(response(invite, 200), SERVER, 0.2)
    assert layer.handle_timer(32.2) == [TransactionTerminated(key)]


def test_accepted_absorbs_non_2xx_and_transport_errors(layer, invite):
    key, _ = start(layer, invite)
    layer.receive(response(invite, 200), SERVER, 0.2)
    assert layer.receive(response(invite, 486), SERVER, 0.3) == []
    assert layer.transport_error(key, 0.4) == []
    assert layer.state(key) == "Accepted"
    assert layer.counters.illegal_inputs == 2


def test_proceeding_absorbs_transport_errors(layer, invite):
    key, _ = start(layer, invite)
    layer.receive(response(invite, 180), SERVER, 0.2)
    assert layer.transport_error(key, 0.3) == []
    assert layer.state(key) == "Proceeding"


def test_completed_absorbs_provisional_and_2xx(layer, invite):
    key, _ = start(layer, invite)
    layer.receive(response(invite, 486), SERVER, 0.2)
    assert layer.receive(response(invite, 180), SERVER, 0.3) == []
    assert layer.receive(response(invite, 200), SERVER, 0.4) == []
    assert layer.counters.illegal_inputs == 2


def test_the_ack_takes_only_the_first_value_of_a_combined_via_line(layer):
    forwarded = request("INVITE", branch="z9hG4bKours")
    forwarded.set("Via", "SIP/2.0/UDP proxy.example.com;branch=z9hG4bKours, "
                  "SIP/2.0/UDP client.example.com;branch=z9hG4bKtheirs")
    layer.send_request(forwarded, SERVER, 0.0)
    (ack_send,) = sends(layer.receive(response(forwarded, 500), SERVER, 0.1))
    assert [v.host for v in ack_send.message.vias] == ["proxy.example.com"]
    assert ack_send.message.via.branch == "z9hG4bKours"
