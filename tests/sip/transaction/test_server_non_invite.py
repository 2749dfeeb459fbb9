"""Every transition of the non-INVITE server transaction (RFC 3261 Figure 8)."""

from __future__ import annotations

import pytest

from cluster.sip.transaction import (
    RequestReceived, Send, TransactionLayer, TransactionTerminated, TransportError,
)

from .messages import TCP, UDP, request, response

KEY = ("s", "z9hG4bKabc1", "client.example.com", 5060, "REGISTER")


@pytest.fixture
def layer() -> TransactionLayer:
    return TransactionLayer()


@pytest.fixture
def register():
    return request("REGISTER", uri="sip:example.com")


def test_request_passes_to_tu_and_enters_trying(layer, register):
    assert layer.receive(register, UDP, 0.0) == [RequestReceived(KEY, register, UDP)]
    assert layer.state(KEY) == "Trying"


def test_trying_absorbs_request_retransmissions(layer, register):
    layer.receive(register, UDP, 0.0)
    assert layer.receive(register, UDP, 0.5) == []
    assert layer.counters.retransmissions_absorbed == 1


def test_trying_1xx_from_tu_is_sent_and_enters_proceeding(layer, register):
    layer.receive(register, UDP, 0.0)
    trying = response(register, 100)
    assert layer.send_response(trying, 0.1) == [Send(trying, UDP, KEY)]
    assert layer.state(KEY) == "Proceeding"


def test_trying_200_699_from_tu_is_sent_and_enters_completed(layer, register):
    layer.receive(register, UDP, 0.0)
    ok = response(register, 200)
    assert layer.send_response(ok, 0.1) == [Send(ok, UDP, KEY)]
    assert layer.state(KEY) == "Completed"


def test_proceeding_request_retransmission_resends_provisional(layer, register):
    layer.receive(register, UDP, 0.0)
    trying = response(register, 100)
    layer.send_response(trying, 0.1)
    assert layer.receive(register, UDP, 0.5) == [Send(trying, UDP, KEY, retransmission=True)]


def test_proceeding_1xx_from_tu_is_sent(layer, register):
    layer.receive(register, UDP, 0.0)
    layer.send_response(response(register, 100), 0.1)
    again = response(register, 100)
    assert layer.send_response(again, 0.2) == [Send(again, UDP, KEY)]
    assert layer.state(KEY) == "Proceeding"


def test_proceeding_200_699_from_tu_is_sent_and_enters_completed(layer, register):
    layer.receive(register, UDP, 0.0)
    layer.send_response(response(register, 100), 0.1)
    unauthorized = response(register, 401)
    assert layer.send_response(unauthorized, 0.2) == [Send(unauthorized, UDP, KEY)]
    assert layer.state(KEY) == "Completed"


def test_proceeding_transport_error_informs_tu_and_terminates(layer, register):
    layer.receive(register, TCP, 0.0)
    layer.send_response(response(register, 100), 0.1)
    assert layer.transport_error(KEY, 0.2) == [TransportError(KEY), TransactionTerminated(KEY)]


def test_completed_request_retransmission_resends_final(layer, register):
    layer.receive(register, UDP, 0.0)
    ok = response(register, 200)
    layer.send_response(ok, 0.1)
    assert layer.receive(register, UDP, 0.5) == [Send(ok, UDP, KEY, retransmission=True)]
    assert layer.state(KEY) == "Completed"


def test_completed_transport_error_informs_tu_and_terminates(layer, register):
    layer.receive(register, UDP, 0.0)
    layer.send_response(response(register, 200), 0.1)
    assert layer.transport_error(KEY, 0.2) == [TransportError(KEY), TransactionTerminated(KEY)]


def test_completed_timer_j_terminates(layer, register):
    layer.receive(register, UDP, 0.0)
    layer.send_response(response(register, 200), 0.1)
    assert layer.handle_timer(32.1) == [TransactionTerminated(KEY)]


def test_completed_absorbs_further_tu_responses(layer, register):
    layer.receive(register, UDP, 0.0)
    layer.send_response(response(register, 200), 0.1)
    assert layer.send_response(response(register, 500), 0.2) == []
    assert layer.counters.illegal_inputs == 1


def test_trying_absorbs_transport_errors(layer, register):
    layer.receive(register, UDP, 0.0)
    assert layer.transport_error(KEY, 0.1) == []
    assert layer.state(KEY) == "Trying"
