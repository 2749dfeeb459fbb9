"""RFC 5626 flow tokens and the decisions that read them (cluster.proxy.flows), sans-IO."""

from __future__ import annotations

import pytest

from cluster.proxy.flows import (
    FLOW_PARAM, Flow, FlowTokens, ForgedFlowToken, dialog_flow, flow_path, registration_flow,
    route_flow,
)
from cluster.proxy.routing import record_route_set
from cluster.sip import Request, parse_complete, parse_name_addr, parse_uri

TOKENS = FlowTokens(b"f" * 32)
TCP = Flow("edge-1", "TCP", ("198.51.100.7", 40123), ("192.0.2.1", 5060), 17)
WSS = Flow("edge-2", "WSS", ("198.51.100.8", 50999), ("192.0.2.1", 8443), 4, strict=True)
UDP = Flow("edge-1", "UDP", ("198.51.100.9", 5062), ("192.0.2.1", 5060))


def register(*contacts: str, supported: str = "") -> Request:
    lines = ["REGISTER sip:example.com SIP/2.0", "Via: SIP/2.0/TCP 198.51.100.7:5060;branch=z9hG4bK1",
             "Max-Forwards: 70", "From: <sip:alice@example.com>;tag=1", "To: <sip:alice@example.com>",
             "Call-ID: reg-1", "CSeq: 1 REGISTER", *[f"Contact: {c}" for c in contacts]]
    if supported:
        lines.append(f"Supported: {supported}")
    message = parse_complete(("\r\n".join([*lines, "Content-Length: 0", "", ""])).encode())
    assert isinstance(message, Request)
    return message


@pytest.mark.parametrize("flow", [TCP, WSS, UDP])
def test_a_token_names_its_flow_and_any_holder_of_the_key_reads_it(flow):
    token = TOKENS.make(flow)
    assert FlowTokens(b"f" * 32).open(token) == flow
    assert token.isascii() and ";" not in token and ">" not in token


@pytest.mark.parametrize("token", ["", "garbage", "AAAA", "%C3%A9"])
def test_garbage_is_forged(token):
    with pytest.raises(ForgedFlowToken):
        TOKENS.of_uri(parse_uri(f"sip:192.0.2.1:5060;{FLOW_PARAM}={token or 'x'};lr"))


def test_a_token_under_another_key_or_altered_is_forged():
    token = TOKENS.make(TCP)
    with pytest.raises(ForgedFlowToken):
        FlowTokens(b"g" * 32).open(token)
    # One character changed anywhere in the token: the MAC no longer holds.
    for index in (0, len(token) // 2, len(token) - 2):
        altered = token[:index] + ("A" if token[index] != "A" else "B") + token[index + 1:]
        with pytest.raises(ForgedFlowToken):
            TOKENS.open(altered)


def test_a_uri_without_a_token_names_no_flow():
    assert TOKENS.of_uri(parse_uri("sip:192.0.2.1:5060;lr")) is None


def test_path_entry_carries_token_and_ob():
    path = flow_path("192.0.2.1:5060", TOKENS.make(TCP), "TCP")
    uri = parse_name_addr(path).uri
    assert uri.has_param("ob") and uri.has_param("lr") and uri.param("transport") == "tcp"
    assert TOKENS.of_uri(uri) == TCP


def test_registration_flows():
    plain = register("<sip:alice@198.51.100.7:5060>")
    assert registration_flow(plain, UDP) is None, "plain UDP: reached at its Contact"
    tcp = registration_flow(plain, TCP)
    assert tcp == TCP and not tcp.strict, "a connection is reused while open"
    ws = registration_flow(plain, WSS)
    assert ws is not None and ws.strict, "a WebSocket client cannot be dialled"
    outbound = register('<sip:alice@198.51.100.9:5062;ob>;+sip.instance="<urn:uuid:1>";reg-id=1',
                        supported="outbound, path")
    udp = registration_flow(outbound, UDP)
    assert udp is not None and udp.strict, "RFC 5626 §6: an outbound flow, even over UDP"
    no_support = register('<sip:alice@198.51.100.9:5062>;+sip.instance="<urn:uuid:1>";reg-id=1')
    assert registration_flow(no_support, UDP) is None, "reg-id without Supported: outbound"


def test_dialog_flow_of_the_caller():
    invite = register("<sip:alice@198.51.100.9:5062>")
    assert dialog_flow(invite, UDP) is None
    assert dialog_flow(invite, TCP) == TCP
    ob = dialog_flow(register("<sip:alice@198.51.100.9:5062;ob>"), UDP)
    assert ob is not None and ob.strict


def test_route_flow_skips_the_flow_the_request_came_over():
    caller, callee = TOKENS.make(TCP), TOKENS.make(WSS)
    routed = (parse_uri(f"sip:192.0.2.1;{FLOW_PARAM}={caller};lr"),
              parse_uri(f"sip:192.0.2.1;{FLOW_PARAM}={callee};lr"))
    assert route_flow(routed, TOKENS, TCP) == WSS, "from the caller: over the callee's flow"
    assert route_flow(routed[::-1], TOKENS, WSS) == TCP, "from the callee: over the caller's flow"
    assert route_flow(routed[:1], TOKENS, TCP) is None, "the client's own flow: on by its route set"
    assert route_flow(routed[:1], TOKENS, UDP) == TCP
    with pytest.raises(ForgedFlowToken):
        route_flow((parse_uri(f"sip:192.0.2.1;{FLOW_PARAM}={caller[:-3]}xyz;lr"),), TOKENS, UDP)


def test_record_route_with_flows():
    one = record_route_set("192.0.2.1:5060", "TCP", "UDP", "dt", inbound_flow="IN")
    assert one[0].count(FLOW_PARAM) == 0 and f"{FLOW_PARAM}=IN" in one[1], "RFC 5658: each side its entry"
    same = record_route_set("192.0.2.1:5060", "TCP", "TCP", "dt", inbound_flow="IN")
    assert len(same) == 1 and f"{FLOW_PARAM}=IN" in same[0]
    two = record_route_set("192.0.2.1:5060", "TCP", "TCP", "dt", inbound_flow="IN", outbound_flow="OUT")
    assert len(two) == 2 and f"{FLOW_PARAM}=OUT" in two[0] and f"{FLOW_PARAM}=IN" in two[1], \
        "two flows over one transport need two entries"


def test_each_record_route_entry_names_the_port_its_side_uses():
    wss_out, udp_in = record_route_set("192.0.2.1:5060", "UDP", "WSS", "dt", onward="192.0.2.1:8443",
                                       outbound_flow="OUT")
    assert wss_out.startswith("<sip:192.0.2.1:8443;transport=ws;") and udp_in.startswith("<sip:192.0.2.1:5060;")
