"""Every transition of the non-INVITE client transaction (RFC 3261 Figure 6)."""

from __future__ import annotations

import pytest

from cluster.sip.transaction import (
    ResponseReceived, Send, TransactionLayer, TransactionTerminated, TransactionTimeout,
    TransportError,
)

from .messages import SERVER, request, response


@pytest.fixture
def layer() -> TransactionLayer:
    return TransactionLayer()


@pytest.fixture
def options():
    return request("OPTIONS")


def test_request_from_tu_sends_request_and_enters_trying(layer, options):
    key, actions = layer.send_request(options, SERVER, 0.0)
    assert key == ("c", "z9hG4bKabc1", "OPTIONS")
    assert actions == [Send(options, SERVER, key)]
    assert layer.state(key) == "Trying"


def test_trying_timer_e_resends_request(layer, options):
    key, _ = layer.send_request(options, SERVER, 0.0)
    assert layer.handle_timer(0.5) == [Send(options, SERVER, key, retransmission=True)]
    assert layer.state(key) == "Trying"


def test_trying_timer_f_informs_tu_and_terminates(layer, options):
    key, _ = layer.send_request(options, SERVER, 0.0)
    actions = layer.handle_timer(32.0)
    assert actions[-2:] == [TransactionTimeout(key, "F"), TransactionTerminated(key)]
    assert layer.state(key) is None


def test_trying_transport_error_informs_tu_and_terminates(layer, options):
    key, _ = layer.send_request(options, SERVER, 0.0)
    assert layer.transport_error(key, 0.0) == [TransportError(key), TransactionTerminated(key)]


def test_trying_1xx_to_tu_enters_proceeding(layer, options):
    key, _ = layer.send_request(options, SERVER, 0.0)
    trying = response(options, 100)
    assert layer.receive(trying, SERVER, 0.1) == [ResponseReceived(key, trying)]
    assert layer.state(key) == "Proceeding"


def test_trying_200_699_to_tu_enters_completed(layer, options):
    key, _ = layer.send_request(options, SERVER, 0.0)
    ok = response(options, 200)
    assert layer.receive(ok, SERVER, 0.1) == [ResponseReceived(key, ok)]
    assert layer.state(key) == "Completed"
    assert layer.handle_timer(1.0) == []  # E stopped


def test_proceeding_timer_e_resends_request_every_t2(layer, options):
    key, _ = layer.send_request(options, SERVER, 0.0)
    layer.receive(response(options, 100), SERVER, 0.1)
    assert layer.handle_timer(0.5) == [Send(options, SERVER, key, retransmission=True)]
    assert layer.next_deadline() == 4.5


def test_proceeding_1xx_to_tu_stays_in_proceeding(layer, options):
    key, _ = layer.send_request(options, SERVER, 0.0)
    layer.receive(response(options, 100), SERVER, 0.1)
    again = response(options, 100)
    assert layer.receive(again, SERVER, 0.2) == [ResponseReceived(key, again)]
    assert layer.state(key) == "Proceeding"


def test_proceeding_200_699_to_tu_enters_completed(layer, options):
    key, _ = layer.send_request(options, SERVER, 0.0)
    layer.receive(response(options, 100), SERVER, 0.1)
    denied = response(options, 403)
    assert layer.receive(denied, SERVER, 0.2) == [ResponseReceived(key, denied)]
    assert layer.state(key) == "Completed"


def test_proceeding_timer_f_informs_tu_and_terminates(layer, options):
    key, _ = layer.send_request(options, SERVER, 0.0)
    layer.receive(response(options, 100), SERVER, 0.1)
    actions = layer.handle_timer(32.0)
    assert actions[-2:] == [TransactionTimeout(key, "F"), TransactionTerminated(key)]


def test_proceeding_transport_error_informs_tu_and_terminates(layer, options):
    key, _ = layer.send_request(options, SERVER, 0.0)
    layer.receive(response(options, 100), SERVER, 0.1)
    assert layer.transport_error(key, 0.5) == [TransportError(key), TransactionTerminated(key)]


def test_completed_absorbs_response_retransmissions(layer, options):
    key, _ = layer.send_request(options, SERVER, 0.0)
    ok = response(options, 200)
    layer.receive(ok, SERVER, 0.1)
    assert layer.receive(ok, SERVER, 0.6) == []
    assert layer.state(key) == "Completed"
    assert layer.counters.retransmissions_absorbed == 1


def test_completed_timer_k_terminates(layer, options):
    key, _ = layer.send_request(options, SERVER, 0.0)
    layer.receive(response(options, 200), SERVER, 0.1)
    assert layer.handle_timer(5.1) == [TransactionTerminated(key)]


def test_completed_absorbs_transport_errors(layer, options):
    key, _ = layer.send_request(options, SERVER, 0.0)
    layer.receive(response(options, 200), SERVER, 0.1)
    assert layer.transport_error(key, 0.2) == []
    assert layer.counters.illegal_inputs == 1


def test_cancel_gets_its_own_client_transaction(layer):
    invite = request("INVITE")
    cancel = request("CANCEL")  # same branch as the INVITE (§9.1)
    invite_key, _ = layer.send_request(invite, SERVER, 0.0)
    cancel_key, _ = layer.send_request(cancel, SERVER, 1.0)
    assert cancel_key != invite_key
    ok = response(cancel, 200)
    assert layer.receive(ok, SERVER, 1.1) == [ResponseReceived(cancel_key, ok)]
    assert layer.state(invite_key) == "Calling"


def test_tu_misuse_raises(layer, options):
    layer.send_request(options, SERVER, 0.0)
    with pytest.raises(ValueError):
        layer.send_request(options, SERVER, 0.0)
    with pytest.raises(ValueError):
        layer.send_request(request("OPTIONS", branch="1234"), SERVER, 0.0)


def test_ack_for_2xx_is_sent_without_a_transaction(layer):
    ack = request("ACK", branch="z9hG4bKnew")
    assert layer.send_request(ack, SERVER, 0.0) == (None, [Send(ack, SERVER)])
    assert len(layer) == 0
