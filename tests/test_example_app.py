"""The example application in examples/ loads through the same path the
worker uses and makes the decisions its docstring promises."""

from __future__ import annotations

from types import SimpleNamespace

from cluster.app.api import Call, Proxy, Reply, Target
from cluster.proxy.routing import LocalAddresses
from cluster.sip import parse_message, parse_uri
from nodes.worker.application import load_application


class FakeServices:
    """Local-memory answers, as the worker's Services gives them."""

    def __init__(self, contacts):
        self.domains = ["example.com"]
        self.local = LocalAddresses(["127.0.0.1:5060"], self.domains)
        self.contacts = contacts
        self.noted = []

    def note(self, event, request, source, detail):
        self.noted.append(event)

    def is_local_domain(self, uri):
        return self.local.is_local_domain(uri)

    def is_trusted(self, host):
        return host.startswith("127.")

    def lookup(self, uri):
        return [Target(parse_uri(c)) for c in self.contacts.get(uri.aor(), [])]

    def user_settings(self, uri):
        return {"forward_busy": "sip:vm-bob@example.com"} if uri.user == "bob" else {}


def _invite(uri: str) -> bytes:
    return (f"INVITE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.7;branch=z9hG4bKex1\r\n"
            f"From: <sip:alice@elsewhere.test>;tag=1\r\nTo: <{uri}>\r\nCall-ID: ex-1\r\n"
            f"CSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()


def _call(app, uri, source_host="192.0.2.7", contacts=None):
    request = parse_message(_invite(uri))
    source = SimpleNamespace(host=source_host, transport="UDP", port=5060, context=None)
    call = Call(request, source, FakeServices(contacts or {}), "worker-1")
    return call, app.handler_for("INVITE")[1](call)


def test_example_app_decisions():
    app = load_application("examples.routing_app:application", "worker-1")
    _, decision = _call(app, "sip:echo@example.com")
    assert isinstance(decision, Reply) and decision.status == 302
    assert decision.headers == (("Contact", "<sip:echo@127.0.0.1:5090>"),)
    _, decision = _call(app, "sip:900123@example.com")
    assert isinstance(decision, Reply) and decision.status == 403
    _, decision = _call(app, "sip:900123@example.com", source_host="127.0.0.1")
    assert isinstance(decision, Reply) and decision.status == 480  # trusted, not registered
    call, decision = _call(app, "sip:bob@example.com",
                           contacts={"sip:bob@example.com": ["sip:bob@192.0.2.20:5062"]})
    assert isinstance(decision, Proxy) and decision.timeout == 20 and decision.parallel
    assert [str(t.uri) for t in decision.targets] == ["sip:bob@192.0.2.20:5062"]
    busy = parse_message(b"SIP/2.0 486 Busy Here\r\nVia: SIP/2.0/UDP 192.0.2.7;branch=z9hG4bKex1\r\n"
                         b"From: <sip:alice@elsewhere.test>;tag=1\r\nTo: <sip:bob@example.com>;tag=2\r\n"
                         b"Call-ID: ex-1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")
    again = app.on_failure(call, busy)
    assert isinstance(again, Proxy) and str(again.targets[0].uri) == "sip:vm-bob@example.com"
    assert app.on_failure(call, busy) is None  # only once
    app.on_response(call, busy)
    assert busy.get("X-Handled-By") == "worker-1"


def test_default_app_relays_through_the_outbound_proxy_and_redirects_per_domain():
    from cluster.app import default
    services = FakeServices({"sip:bob@example.com": ["sip:bob@192.0.2.20:5062"]})
    services.outbound_proxy = "sip:sbc.example.net:5070"
    services.user = lambda uri: None
    request = parse_message(_invite("sip:carol@foreign.test"))
    trusted = SimpleNamespace(host="127.0.0.1", transport="UDP", port=5060, context=None)
    decision = default.route(Call(request, trusted, services, "worker-1"))
    assert isinstance(decision, Proxy)
    assert str(decision.targets[0].uri) == "sip:carol@foreign.test"
    assert decision.targets[0].path == ("<sip:sbc.example.net:5070;lr>",)
    # From an untrusted network: never an open relay.
    outsider = SimpleNamespace(host="192.0.2.99", transport="UDP", port=5060, context=None)
    refused = default.route(Call(parse_message(_invite("sip:carol@foreign.test")), outsider, services, "w"))
    assert isinstance(refused, Reply) and refused.status == 403
    # A domain in redirect mode answers 302 with the registered contacts.
    default.application.redirect_domains.add("example.com")
    try:
        request = parse_message(_invite("sip:bob@example.com"))
        decision = default.route(Call(request, trusted, services, "worker-1"))
    finally:
        default.application.redirect_domains.discard("example.com")
    assert isinstance(decision, Reply) and decision.status == 302
    assert decision.headers == (("Contact", "<sip:bob@192.0.2.20:5062>"),)
