"""Where server transactions send responses (RFC 3261 §18.2.2, RFC 3581 §4).

Over UDP a response goes to the address the request came from, at the Via's
sent-by port unless the client asked for ``rport``; the TU still sees the
packet's real source."""

from __future__ import annotations

import pytest

from cluster.sip.transaction import Peer, RequestReceived, Send, TransactionLayer

from .messages import request, response

SOURCE = Peer("UDP", "192.0.2.10", 40000, context="edge-1")


def _sends(actions):
    return [a for a in actions if isinstance(a, Send)]


@pytest.mark.parametrize(
    ("sent_by", "expected_port"),
    [
        ("client.example.com:5070", 5070),           # sent-by port, not the source port
        ("client.example.com", 5060),                # no port: the default
        ("client.example.com:5070;rport", 40000),    # RFC 3581: the source port
        ("client.example.com:5070;rport=40000", 40000),
    ],
)
def test_udp_response_goes_to_source_address_at_the_port_the_via_asks_for(sent_by, expected_port):
    layer = TransactionLayer()
    register = request("REGISTER", sent_by=sent_by, uri="sip:example.com")
    events = layer.receive(register, SOURCE, 0.0)
    # The TU is told where the packet came from, unchanged.
    assert events[0].source == SOURCE
    ok = response(register, 200)
    [send] = _sends(layer.send_response(ok, 0.1))
    assert (send.destination.host, send.destination.port) == ("192.0.2.10", expected_port)
    # The runtime's context (which edge holds the socket) travels along.
    assert send.destination.context == "edge-1"


def test_invite_provisional_and_final_follow_the_sent_by_port():
    layer = TransactionLayer()
    invite = request("INVITE", sent_by="client.example.com:5070")
    out = layer.receive(invite, SOURCE, 0.0)
    ringing = response(invite, 180)
    sends = _sends(out) + _sends(layer.send_response(ringing, 0.1))
    assert sends and all(s.destination.port == 5070 for s in sends)


def test_reliable_transport_answers_on_the_connection():
    layer = TransactionLayer()
    tcp = Peer("TCP", "192.0.2.10", 40000, context="conn-7")
    register = request("REGISTER", transport="TCP", sent_by="client.example.com:5070",
                       uri="sip:example.com")
    layer.receive(register, tcp, 0.0)
    [send] = _sends(layer.send_response(response(register, 200), 0.1))
    assert send.destination == tcp and send.destination.port == 40000 and send.destination.context == "conn-7"


def test_request_received_event_keeps_source_for_trust_decisions():
    layer = TransactionLayer()
    register = request("REGISTER", sent_by="client.example.com:5070", uri="sip:example.com")
    [event] = layer.receive(register, SOURCE, 0.0)
    assert isinstance(event, RequestReceived) and event.source.port == 40000
