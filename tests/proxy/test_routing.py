"""Request forwarding rules of the stateful proxy (RFC 3261 §16.3–§16.6), sans-IO."""

from __future__ import annotations

import pytest

from cluster.proxy.routing import (
    Hop, LocalAddresses, RoutingError, forward_copy, hop_for, loop_detected, loop_hash, next_hop_uri,
    preprocess_routes, proxy_via, record_route_set, record_route_value, split_hostport,
)
from cluster.sip import ParseError, Request, parse_message, parse_uri, parse_via

US = "192.0.2.10:5060"
LOCAL = LocalAddresses([US, "[2001:db8::10]:5070", "sip.example.net"], domains=["example.com"])


def request(uri: str = "sip:bob@example.com", *, routes=(), max_forwards: str | None = "70",
            extra: str = "", method: str = "INVITE") -> Request:
    lines = [
        f"{method} {uri} SIP/2.0",
        "Via: SIP/2.0/UDP 198.51.100.7:5062;branch=z9hG4bKcaller1;rport",
    ]
    if max_forwards is not None:
        lines.append(f"Max-Forwards: {max_forwards}")
    lines += [f"Route: {r}" for r in routes]
    lines += [
        "From: <sip:alice@example.com>;tag=a1",
        "To: <sip:bob@example.com>",
        "Call-ID: routing-1@198.51.100.7",
        f"CSeq: 1 {method}",
    ]
    if extra:
        lines.append(extra)
    message = parse_message(("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode())
    assert isinstance(message, Request)
    return message


# -- who we are -----------------------------------------------------------------------


@pytest.mark.parametrize("uri,us", [
    ("sip:192.0.2.10:5060;lr", True),
    ("sip:192.0.2.10;lr", True),             # no port: 5060 (§19.1.2)
    ("sip:192.0.2.10:5061;lr", False),
    ("sip:[2001:db8::10]:5070;lr", True),
    ("sip:sip.example.net;lr", True),         # advertised without a port: any port
    ("sip:sip.example.net:5080;lr", True),
    ("sip:SIP.Example.NET;lr", True),
    ("sip:other.example.net;lr", False),
    ("tel:+15551234", False),
])
def test_is_us(uri, us):
    assert LOCAL.is_us(parse_uri(uri)) is us


def test_split_hostport():
    assert split_hostport("192.0.2.1:5060") == ("192.0.2.1", 5060)
    assert split_hostport("host.example") == ("host.example", None)
    assert split_hostport("[2001:db8::1]:5070") == ("[2001:db8::1]", 5070)
    assert split_hostport("[2001:db8::1]") == ("[2001:db8::1]", None)


# -- Route processing (§16.4) -----------------------------------------------------------


def test_loose_routing_removes_our_route_and_keeps_the_request_uri():
    req = request(routes=[f"<sip:{US};lr>", "<sip:next.example.org;lr>"])
    preprocess_routes(req, LOCAL)
    assert str(req.uri) == "sip:bob@example.com"
    assert [str(r.uri) for r in req.routes] == ["sip:next.example.org;lr"]
    assert str(next_hop_uri(req)) == "sip:next.example.org;lr"


def test_a_route_that_is_not_ours_stays():
    req = request(routes=["<sip:next.example.org;lr>"])
    preprocess_routes(req, LOCAL)
    assert [str(r.uri) for r in req.routes] == ["sip:next.example.org;lr"]


def test_strict_router_rewrite_is_undone():
    """The previous hop was a strict router: it put our Record-Route URI in
    the Request-URI and the real target at the end of the Route set."""
    req = request(f"sip:{US};lr", routes=["<sip:proxy2.example.org;lr>", "<sip:bob@192.0.2.99>"])
    preprocess_routes(req, LOCAL)
    assert str(req.uri) == "sip:bob@192.0.2.99"
    assert [str(r.uri) for r in req.routes] == ["sip:proxy2.example.org;lr"]


def test_strict_router_rewrite_with_our_route_left_on_top():
    req = request(f"sip:{US};lr", routes=[f"<sip:{US};lr>", "<sip:bob@192.0.2.99>"])
    preprocess_routes(req, LOCAL)
    assert str(req.uri) == "sip:bob@192.0.2.99"
    assert req.routes == []
    assert str(next_hop_uri(req)) == "sip:bob@192.0.2.99"


def test_both_entries_of_a_double_record_route_are_removed():
    """RFC 5658 §4: an in-dialog request through a proxy that changed
    transports carries both of its entries."""
    req = request("sip:bob@192.0.2.99", routes=[
        f"<sip:{US};transport=tcp;lr>", f"<sip:{US};lr>", "<sip:next.example.org;lr>"])
    preprocess_routes(req, LOCAL)
    assert [str(r.uri) for r in req.routes] == ["sip:next.example.org;lr"]


def test_request_for_us_without_routes_is_left_alone():
    req = request(f"sip:{US}")
    preprocess_routes(req, LOCAL)
    assert str(req.uri) == f"sip:{US}"
    assert req.routes == []


# -- next hop (RFC 3263 reduced to numeric hosts) -------------------------------------


@pytest.mark.parametrize("uri,hop", [
    ("sip:bob@192.0.2.5", Hop("UDP", "192.0.2.5", 5060)),
    ("sip:bob@192.0.2.5:5080", Hop("UDP", "192.0.2.5", 5080)),
    ("sip:bob@192.0.2.5;transport=tcp", Hop("TCP", "192.0.2.5", 5060)),
    ("sip:bob@192.0.2.5;transport=TLS", Hop("TLS", "192.0.2.5", 5061)),
    ("sips:bob@192.0.2.5", Hop("TLS", "192.0.2.5", 5061)),
    ("sips:bob@192.0.2.5:6000;transport=tcp", Hop("TLS", "192.0.2.5", 6000)),
    ("sip:bob@192.0.2.5;transport=ws", Hop("WS", "192.0.2.5", 80)),
    ("sip:bob@example.com;maddr=192.0.2.7", Hop("UDP", "192.0.2.7", 5060)),
    ("sip:bob@192.0.2.5:5090;maddr=192.0.2.7;transport=tcp", Hop("TCP", "192.0.2.7", 5090)),
    ("sip:bob@[2001:db8::5]:5070", Hop("UDP", "2001:db8::5", 5070)),
])
def test_hop_for(uri, hop):
    assert hop_for(parse_uri(uri)) == hop


def test_hop_for_default_transport_and_resolver():
    assert hop_for(parse_uri("sip:bob@192.0.2.5"), default_transport="TCP") == \
        Hop("TCP", "192.0.2.5", 5060)
    names = {"proxy.example.org": "192.0.2.77"}
    assert hop_for(parse_uri("sip:proxy.example.org:5070"), resolve=names.get) == \
        Hop("UDP", "192.0.2.77", 5070)


def test_hop_for_unresolvable_name_is_404_and_non_sip_is_416():
    # A routing failure, not a parse error: the request was well formed.
    with pytest.raises(RoutingError) as info:
        hop_for(parse_uri("sip:bob@nowhere.invalid"), resolve=lambda name: None)
    assert info.value.status == 404
    with pytest.raises(RoutingError) as info:
        hop_for(parse_uri("sip:bob@nowhere.invalid"))
    assert info.value.status == 404
    with pytest.raises(RoutingError) as info:
        hop_for(parse_uri("tel:+15551234"))
    assert info.value.status == 416
    assert not isinstance(info.value, ParseError)


# -- the forwarded copy (§16.6) ---------------------------------------------------------


def via() -> object:
    return parse_via(f"SIP/2.0/UDP {US};branch=z9hG4bKproxy1;rport")


def test_forward_copy_rewrites_uri_decrements_max_forwards_and_pushes_our_via():
    original = request()
    out = forward_copy(original, parse_uri("sip:bob@192.0.2.99:5080"), via=via(),
                       record_route=f"<sip:{US};lr>")
    assert str(out.uri) == "sip:bob@192.0.2.99:5080"             # step 2
    assert out.max_forwards == 69                                # step 3
    assert [r.uri.host for r in out.record_routes] == ["192.0.2.10"]  # step 4
    assert [v.branch for v in out.vias] == ["z9hG4bKproxy1", "z9hG4bKcaller1"]  # step 8
    wire = out.to_bytes()
    assert wire.startswith(b"INVITE sip:bob@192.0.2.99:5080 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10")
    assert b"Max-Forwards: 69\r\n" in wire
    # The received request is untouched (one copy per branch).
    assert str(original.uri) == "sip:bob@example.com"
    assert original.max_forwards == 70 and len(original.vias) == 1
    assert original.record_routes == []


def test_forward_in_place_modifies_the_request_itself_with_the_same_result():
    copied = forward_copy(request(), None, via=via(), record_route=None)
    original = request()
    out = forward_copy(original, None, via=via(), record_route=None, in_place=True)
    assert out is original
    assert out.to_bytes() == copied.to_bytes()
    assert out.max_forwards == 69 and [v.branch for v in out.vias] == ["z9hG4bKproxy1", "z9hG4bKcaller1"]


def test_forward_copy_without_max_forwards_adds_70_and_keeps_the_uri_when_none():
    out = forward_copy(request(max_forwards=None), None, via=via(), record_route=None)
    assert out.max_forwards == 70
    assert str(out.uri) == "sip:bob@example.com"
    assert out.record_routes == []


def test_our_record_route_goes_on_top_of_the_existing_ones():
    original = request(extra="Record-Route: <sip:upstream.example.org;lr>")
    out = forward_copy(original, None, via=via(), record_route=record_route_set(US, "UDP", "TCP"))
    assert [str(r) for r in out.get_all("record-route")] == [
        f"<sip:{US};transport=tcp;lr>", f"<sip:{US};lr>", "<sip:upstream.example.org;lr>"]


def test_path_becomes_the_route_ahead_of_existing_routes():
    """RFC 3327 §5.3: a contact registered through edge proxies is reached
    through them, in the stored Path order."""
    original = request(routes=["<sip:later.example.org;lr>"])
    out = forward_copy(original, parse_uri("sip:bob@10.0.0.5"), via=via(), record_route=None,
                       path=["<sip:edge1.example.org;lr>", "<sip:edge2.example.org;lr>"])
    assert [r.uri.host for r in out.routes] == [
        "edge1.example.org", "edge2.example.org", "later.example.org"]
    assert str(next_hop_uri(out)) == "sip:edge1.example.org;lr"
    assert str(out.uri) == "sip:bob@10.0.0.5"


def test_record_route_values():
    assert record_route_value(US, "UDP") == f"<sip:{US};lr>"
    assert record_route_value(US, "tcp") == f"<sip:{US};transport=tcp;lr>"
    assert record_route_value(US, "TLS") == f"<sip:{US};transport=tls;lr>"
    # RFC 7118 §5.2: transport=ws names WS and WSS alike.
    assert record_route_value(US, "WS") == f"<sip:{US};transport=ws;lr>"
    assert record_route_value(US, "WSS") == f"<sip:{US};transport=ws;lr>"
    assert record_route_set(US, "WSS", "UDP") == (f"<sip:{US};lr>", f"<sip:{US};transport=ws;lr>")
    assert record_route_set(US, "UDP", "UDP") == (f"<sip:{US};lr>",)
    assert record_route_set(US, "TCP", "TCP") == (f"<sip:{US};transport=tcp;lr>",)
    # RFC 5658: the callee (topmost) reaches us over the outgoing transport,
    # the caller over the incoming one.
    assert record_route_set(US, "TCP", "UDP") == (f"<sip:{US};lr>", f"<sip:{US};transport=tcp;lr>")


# -- our Via and loop detection (§16.3 step 4, §16.6 step 8, §16.11) ------------------


def test_proxy_via_is_deterministic_per_incoming_transaction():
    a = proxy_via(request(), "UDP", US, "salt0", shard="worker-1")
    b = proxy_via(request(), "UDP", US, "salt0", shard="worker-2")
    assert a.branch == b.branch  # another shard forwards a retransmission identically
    assert a.branch.startswith("z9hG4bK")
    assert a.host == "192.0.2.10" and a.port == 5060 and a.has_rport
    assert dict(a.params)["wk"] == "worker-1"
    assert proxy_via(request(), "UDP", US, "salt1").branch != a.branch  # another fork
    other = request(extra="Subject: x")
    other.set("Via", "SIP/2.0/UDP 198.51.100.7:5062;branch=z9hG4bKcaller2;rport")
    assert proxy_via(other, "UDP", US, "salt0").branch != a.branch  # another transaction


def _forwarded_back(original: Request) -> Request:
    """``original`` as it reaches us again after we forwarded it."""
    out = forward_copy(original, None, via=proxy_via(original, "UDP", US, "salt0"),
                       record_route=None)
    return parse_message(out.to_bytes())


def test_a_request_that_comes_back_unchanged_has_looped():
    back = _forwarded_back(request())
    assert loop_detected(back, LOCAL)
    # Through another proxy first: our Via is no longer on top.
    back.push_via(parse_via("SIP/2.0/UDP 203.0.113.9;branch=z9hG4bKother"))
    assert loop_detected(back, LOCAL)


def test_a_request_that_comes_back_with_a_new_request_uri_is_spiralling():
    back = _forwarded_back(request())
    back.uri = parse_uri("sip:bob-mobile@example.com")
    assert not loop_detected(back, LOCAL)


def test_no_loop_without_our_via():
    back = _forwarded_back(request())
    back.pop_via()
    assert not loop_detected(back, LOCAL)
    assert not loop_detected(request(), LOCAL)
    # Someone else's Via with a dotted branch is not ours either.
    spoof = request()
    spoof.push_via(parse_via(f"SIP/2.0/UDP 203.0.113.9;branch=z9hG4bKx.{loop_hash(spoof)}"))
    assert not loop_detected(spoof, LOCAL)


def test_loop_hash_ignores_hop_by_hop_fields():
    a = request()
    b = request(max_forwards="12")
    b.push_via(parse_via("SIP/2.0/UDP 203.0.113.9;branch=z9hG4bKother"))
    assert loop_hash(a) == loop_hash(b)
    assert loop_hash(a) != loop_hash(request(extra="Proxy-Require: foo"))
    assert loop_hash(a) != loop_hash(request(routes=["<sip:next.example.org;lr>"]))


def test_loop_hash_is_the_same_for_an_invite_and_its_cancel_without_credentials():
    # §9.1: the CANCEL copies Request-URI, Call-ID, To, From, CSeq number and
    # Route, not the INVITE's Proxy-Authorization; the hash is in the branch
    # a CANCEL must share with its INVITE (§16.10).
    plain = request()
    credentialed = request(extra='Proxy-Authorization: Digest username="alice", realm="localhost", '
                                 'nonce="n1", uri="sip:bob@localhost", response="00"')
    assert loop_hash(plain) == loop_hash(credentialed)
