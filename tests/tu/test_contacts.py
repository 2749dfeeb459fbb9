"""Registered contacts named by a host name (RFC 3263, RFC 3261 §18.2.2):
a UA registered over a TCP or TLS connection is reached on that connection
while it is open, and at its Contact when it has closed — located by DNS
like any other target; when the name does not locate, the connection is
still the way. A plain UDP registration is located as any target is; a
WebSocket contact is never looked up (RFC 7118: the UA accepts nothing).
No sockets, no DNS: locations are handed in."""

from __future__ import annotations

import pytest

from cluster.app.api import Application, Target
from cluster.dns.rfc3263 import Destination, Location
from cluster.proxy.flows import FLOW_PARAM, Flow
from cluster.sip import parse_uri
from cluster.tu.outputs import EdgeRoute, Resolve

from .support import CALLER, destinations, make_tu, request, requests, statuses

RECEIVED = ("198.51.100.20", 40123)
"""The registration connection's far end (an ephemeral port)."""


def to_contact(contact: str, transport: str | None, *, conn: int | None = 7) -> Application:
    app = Application("contacts")

    @app.request("INVITE")
    def route(call):
        if transport is None:  # a plain UDP registration: the Contact alone
            return call.proxy([Target(parse_uri(contact))])
        return call.proxy([Target(parse_uri(contact), edge="edge-1", conn=conn, transport=transport,
                                  received=RECEIVED)])
    return app


def resolves(out: list) -> list[Resolve]:
    return [o for o in out if isinstance(o, Resolve)]


@pytest.mark.parametrize("transport, contact, port, secure", [
    ("TCP", "sip:bob@bob.test:5070;transport=tcp", 5070, False),
    ("TCP", "sip:bob@bob.test", None, False),
    ("TLS", "sip:bob@bob.test:5071;transport=tls", 5071, True),
    ("TLS", "sips:bob@bob.test", None, True),
])
def test_a_named_contact_of_a_connection_is_located_over_its_transport(transport, contact, port, secure):
    tu = make_tu(to_contact(contact, transport))
    (resolve,) = resolves(tu.receive(request(), CALLER, 0.0))
    target = resolve.target
    assert (target.host, target.port, target.transport, target.secure) == ("bob.test", port, transport, secure)
    located = Destination(transport, "192.0.2.80", 5070)
    out = tu.resolved(resolve.ticket, Location((located,)), 0.1)
    (peer,) = destinations(out, "INVITE")
    assert (peer.transport, peer.host, peer.port) == (transport, "192.0.2.80", 5070)
    route = peer.context
    assert isinstance(route, EdgeRoute) and (route.edge, route.conn) == ("edge-1", 7), \
        "the registration's connection while it is open"


def test_a_numeric_contact_of_a_connection_needs_no_dns():
    tu = make_tu(to_contact("sip:bob@192.0.2.81:5072;transport=tcp", "TCP"))
    out = tu.receive(request(), CALLER, 0.0)
    assert resolves(out) == []
    assert [(p.host, p.port) for p in destinations(out, "INVITE")] == [("192.0.2.81", 5072)]


def test_a_contact_name_that_does_not_locate_leaves_the_connection():
    tu = make_tu(to_contact("sip:bob@gone.test:5070;transport=tcp", "TCP"))
    (resolve,) = resolves(tu.receive(request(), CALLER, 0.0))
    out = tu.resolved(resolve.ticket, Location((), "nxdomain", "A gone.test: nxdomain"), 0.1)
    assert 480 not in statuses(out)
    (peer,) = destinations(out, "INVITE")
    assert (peer.transport, peer.host, peer.port) == ("TCP", *RECEIVED)
    assert tu.stats["dns_contact_over_connection"] == 1


def test_a_plain_udp_registration_with_a_name_is_located():
    tu = make_tu(to_contact("sip:bob@bob.test:5070", None))
    (resolve,) = resolves(tu.receive(request(), CALLER, 0.0))
    assert (resolve.target.host, resolve.target.port) == ("bob.test", 5070)
    out = tu.resolved(resolve.ticket, Location((Destination("UDP", "192.0.2.82", 5070),)), 0.1)
    assert [p.host for p in destinations(out, "INVITE")] == ["192.0.2.82"]


@pytest.mark.parametrize("transport", ["WS", "WSS"])
def test_a_websocket_contact_is_never_looked_up(transport):
    tu = make_tu(to_contact(f"sip:bob@df7jal23ls0d.invalid;transport={transport.lower()}", transport))
    out = tu.receive(request(), CALLER, 0.0)
    assert resolves(out) == []
    assert [(p.host, p.port) for p in destinations(out, "INVITE")] == [RECEIVED]
    assert len(requests(out, "INVITE")) == 1


CONNECTION = Flow("edge-2", "TCP", RECEIVED, ("192.0.2.1", 5060), 7, strict=False)
"""A plain TCP registration: the connection is reused while open (§18.2.2)."""


def over(flow: Flow, contact: str) -> Application:
    app = Application("connection")

    @app.request("INVITE")
    def route(call):
        return call.proxy([Target(parse_uri(contact), flow=flow)])
    return app


def test_a_named_contact_registered_over_a_plain_connection_is_located():
    tu = make_tu(over(CONNECTION, "sip:bob@bob.test:5070;transport=tcp"))
    (resolve,) = resolves(tu.receive(request(), CALLER, 0.0))
    assert (resolve.target.host, resolve.target.port, resolve.target.transport) == ("bob.test", 5070, "TCP")
    out = tu.resolved(resolve.ticket, Location((Destination("TCP", "192.0.2.83", 5070),)), 0.1)
    (peer,) = destinations(out, "INVITE")
    assert (peer.host, peer.port) == ("192.0.2.83", 5070)
    assert (peer.context.edge, peer.context.conn, peer.context.flow) == ("edge-2", 7, False), \
        "the connection while it is open, through the edge holding it"
    (invite,) = requests(out, "INVITE")
    assert FLOW_PARAM in invite.get_all("record-route")[0], "the connection's token in our Record-Route"


def test_a_connection_whose_contact_does_not_locate_is_still_used():
    tu = make_tu(over(CONNECTION, "sip:bob@gone.test;transport=tcp"))
    (resolve,) = resolves(tu.receive(request(), CALLER, 0.0))
    out = tu.resolved(resolve.ticket, Location((), "timeout", "A gone.test: timeout", failed=True), 0.1)
    (peer,) = destinations(out, "INVITE")
    assert (peer.host, peer.port, peer.context.conn) == (*RECEIVED, 7)


def test_a_strict_flow_contact_is_not_located():
    strict = Flow("edge-2", "TCP", RECEIVED, ("192.0.2.1", 5060), 7, strict=True)
    tu = make_tu(over(strict, "sip:bob@bob.test:5070;transport=tcp"))
    out = tu.receive(request(), CALLER, 0.0)
    assert resolves(out) == []
    assert [(p.host, p.port) for p in destinations(out, "INVITE")] == [RECEIVED]
