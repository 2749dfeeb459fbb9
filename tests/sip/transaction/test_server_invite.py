"""Every transition of the INVITE server transaction (RFC 3261 Figure 7, RFC 6026 §7.1)."""

from __future__ import annotations

import pytest

from cluster.sip.transaction import (
    AckReceived, RequestReceived, Send, TransactionLayer, TransactionTerminated,
    TransactionTimeout, TransportError,
)

from .messages import TCP, UDP, ack_for, request, response, sends

KEY = ("s", "z9hG4bKabc1", "client.example.com", 5060, "INVITE")


@pytest.fixture
def layer() -> TransactionLayer:
    return TransactionLayer()


@pytest.fixture
def invite():
    return request("INVITE")


def test_invite_passes_to_tu_sends_100_and_enters_proceeding(layer, invite):
    actions = layer.receive(invite, UDP, 0.0)
    (trying,) = sends(actions)
    assert trying.message.status == 100 and trying.destination == UDP and trying.key == KEY
    assert trying.message.to.tag is None  # §8.2.6.1
    assert actions[-1] == RequestReceived(KEY, invite, UDP)
    assert layer.state(KEY) == "Proceeding"


def test_invite_without_automatic_100_only_passes_to_tu(invite):
    layer = TransactionLayer(send_trying=False)
    assert layer.receive(invite, UDP, 0.0) == [RequestReceived(KEY, invite, UDP)]


def test_proceeding_invite_retransmission_resends_last_provisional(layer, invite):
    layer.receive(invite, UDP, 0.0)
    ringing = response(invite, 180)
    layer.send_response(ringing, 0.1)
    assert layer.receive(invite, UDP, 0.5) == [Send(ringing, UDP, KEY, retransmission=True)]
    assert layer.state(KEY) == "Proceeding"


def test_proceeding_101_199_from_tu_is_sent(layer, invite):
    layer.receive(invite, UDP, 0.0)
    ringing = response(invite, 180)
    assert layer.send_response(ringing, 0.1) == [Send(ringing, UDP, KEY)]
    assert layer.state(KEY) == "Proceeding"


def test_proceeding_300_699_from_tu_is_sent_and_enters_completed(layer, invite):
    layer.receive(invite, UDP, 0.0)
    busy = response(invite, 486)
    assert layer.send_response(busy, 0.1) == [Send(busy, UDP, KEY)]
    assert layer.state(KEY) == "Completed"


def test_proceeding_2xx_from_tu_is_sent_and_enters_accepted(layer, invite):
    layer.receive(invite, UDP, 0.0)
    ok = response(invite, 200)
    assert layer.send_response(ok, 0.1) == [Send(ok, UDP, KEY)]
    assert layer.state(KEY) == "Accepted"


def test_proceeding_transport_error_informs_tu(layer, invite):
    layer.receive(invite, TCP, 0.0)
    tcp_key = KEY
    assert layer.transport_error(tcp_key, 0.1) == [TransportError(tcp_key)]
    assert layer.state(tcp_key) == "Proceeding"  # RFC 6026 Figure 7


def test_completed_invite_retransmission_resends_final(layer, invite):
    layer.receive(invite, UDP, 0.0)
    busy = response(invite, 486)
    layer.send_response(busy, 0.1)
    assert layer.receive(invite, UDP, 0.3) == [Send(busy, UDP, KEY, retransmission=True)]


def test_completed_timer_g_resends_final(layer, invite):
    layer.receive(invite, UDP, 0.0)
    busy = response(invite, 486)
    layer.send_response(busy, 0.0)
    assert layer.handle_timer(0.5) == [Send(busy, UDP, KEY, retransmission=True)]
    assert layer.state(KEY) == "Completed"


def test_completed_ack_enters_confirmed_and_stops_g_and_h(layer, invite):
    layer.receive(invite, UDP, 0.0)
    busy = response(invite, 486)
    layer.send_response(busy, 0.0)
    assert layer.receive(ack_for(invite, busy), UDP, 0.2) == []
    assert layer.state(KEY) == "Confirmed"
    assert layer.next_deadline() == 5.2  # only Timer I left


def test_completed_timer_h_informs_tu_and_terminates(layer, invite):
    layer.receive(invite, TCP, 0.0)
    layer.send_response(response(invite, 486), 0.0)
    assert layer.handle_timer(32.0) == [TransactionTimeout(KEY, "H"), TransactionTerminated(KEY)]


def test_completed_transport_error_informs_tu_and_terminates(layer, invite):
    layer.receive(invite, UDP, 0.0)
    layer.send_response(response(invite, 486), 0.0)
    assert layer.transport_error(KEY, 0.1) == [TransportError(KEY), TransactionTerminated(KEY)]


def test_confirmed_absorbs_ack_retransmissions(layer, invite):
    layer.receive(invite, UDP, 0.0)
    busy = response(invite, 486)
    layer.send_response(busy, 0.0)
    layer.receive(ack_for(invite, busy), UDP, 0.2)
    assert layer.receive(ack_for(invite, busy), UDP, 0.7) == []
    assert layer.receive(invite, UDP, 0.8) == []
    assert layer.state(KEY) == "Confirmed"


def test_confirmed_timer_i_terminates(layer, invite):
    layer.receive(invite, UDP, 0.0)
    busy = response(invite, 486)
    layer.send_response(busy, 0.0)
    layer.receive(ack_for(invite, busy), UDP, 0.2)
    assert layer.handle_timer(5.2) == [TransactionTerminated(KEY)]


def test_accepted_absorbs_invite_retransmissions(layer, invite):
    layer.receive(invite, UDP, 0.0)
    layer.send_response(response(invite, 200), 0.1)
    assert layer.receive(invite, UDP, 0.5) == []  # never reaches the TU again
    assert layer.counters.retransmissions_absorbed == 1


def test_accepted_2xx_from_tu_is_sent(layer, invite):
    layer.receive(invite, UDP, 0.0)
    ok = response(invite, 200)
    layer.send_response(ok, 0.1)
    assert layer.send_response(ok, 0.6) == [Send(ok, UDP, KEY, retransmission=True)]
    assert layer.state(KEY) == "Accepted"


def test_accepted_ack_passes_to_tu(layer, invite):
    layer.receive(invite, UDP, 0.0)
    ok = response(invite, 200)
    layer.send_response(ok, 0.1)
    same_branch_ack = ack_for(invite, ok)
    assert layer.receive(same_branch_ack, UDP, 0.2) == [AckReceived(same_branch_ack, UDP, KEY)]


def test_accepted_timer_l_terminates(layer, invite):
    layer.receive(invite, UDP, 0.0)
    layer.send_response(response(invite, 200), 0.1)
    assert layer.handle_timer(32.1) == [TransactionTerminated(KEY)]


def test_accepted_transport_error_informs_tu(layer, invite):
    layer.receive(invite, UDP, 0.0)
    layer.send_response(response(invite, 200), 0.1)
    assert layer.transport_error(KEY, 0.2) == [TransportError(KEY)]
    assert layer.state(KEY) == "Accepted"


def test_final_responses_after_the_final_are_absorbed(layer, invite):
    layer.receive(invite, UDP, 0.0)
    layer.send_response(response(invite, 486), 0.1)
    assert layer.send_response(response(invite, 200), 0.2) == []
    assert layer.send_response(response(invite, 180), 0.2) == []
    assert layer.state(KEY) == "Completed"
    assert layer.counters.illegal_inputs == 2


def test_ack_before_a_final_response_is_absorbed(layer, invite):
    layer.receive(invite, UDP, 0.0)
    assert layer.receive(ack_for(invite, response(invite, 486)), UDP, 0.1) == []
    assert layer.state(KEY) == "Proceeding"
    assert layer.counters.illegal_inputs == 1


def test_response_for_a_gone_transaction_is_counted(layer, invite):
    assert layer.send_response(response(invite, 200), 0.0) == []
    assert layer.counters.unmatched_tu_responses == 1
