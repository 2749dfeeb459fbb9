"""RFC 5626 flows in the transaction user, on a hand-advanced clock: a branch
goes over the flow a contact registered from, 430 tries the instance's next
flow, flow tokens ride in Record-Route and steer in-dialog requests, forged
tokens get 403. No sockets."""

from __future__ import annotations

from cluster.app.api import Application, Target
from cluster.dns.rfc3263 import Destination
from cluster.proxy.flows import FLOW_PARAM, Flow
from cluster.sip import parse_uri
from cluster.sip.transaction.peer import Peer
from cluster.tu import EdgeRoute
from cluster.tu.outputs import Resolve

from .support import CALLER, EDGE, US, answer, destinations, make_tu, request, requests, statuses

PHONE = Flow("edge-2", "TCP", ("203.0.113.5", 40001), ("192.0.2.1", 5060), 7, strict=True)
LAPTOP = Flow("edge-3", "WSS", ("203.0.113.6", 40002), ("192.0.2.1", 8443), 9, strict=True)
BOB = "sip:bob@203.0.113.5:5060;transport=tcp"


def to_flows(*flows: Flow) -> Application:
    app = Application("flows")

    @app.request("INVITE", "BYE", "ACK")
    def route(call):
        if call.request.to.tag:
            return call.proxy([call.request.uri], record_route=False)
        first, *rest = [Target(parse_uri(BOB), flow=f) for f in flows]
        return call.proxy([Target(first.uri, flow=first.flow, alternates=tuple(rest))])

    return app


def test_a_branch_goes_over_the_registered_flow_through_its_edge():
    tu = make_tu(to_flows(PHONE))
    out = tu.receive(request(), CALLER, 0.0)
    (dest,) = destinations(out, "INVITE")
    assert (dest.transport, dest.host, dest.port) == ("TCP", "203.0.113.5", 40001)
    assert dest.context == EdgeRoute("edge-2", 7, ("192.0.2.1", 5060), US, flow=True)
    (invite,) = requests(out, "INVITE")
    routes = invite.get_all("record-route")
    # UDP caller, TCP callee: RFC 5658 double Record-Route; the callee's
    # entry carries its flow token, the UDP caller's none.
    assert len(routes) == 2 and FLOW_PARAM in routes[0] and FLOW_PARAM not in routes[1]
    token = parse_uri(routes[0].strip("<>")).param(FLOW_PARAM)
    assert tu.services.flows.open(token) == PHONE


def test_430_tries_the_next_flow_then_answers_480():
    tu = make_tu(to_flows(PHONE, LAPTOP))
    (first,) = requests(tu.receive(request(), CALLER, 0.0), "INVITE")
    out = answer(tu, first, 430, 1.0)
    assert statuses(out) == [], "430 never goes upstream (RFC 5626 §11.5)"
    (dest,) = destinations(out, "INVITE")
    assert dest.context.edge == "edge-3" and dest.context.conn == 9 and dest.transport == "WSS"
    (second,) = requests(out, "INVITE")
    assert second.via.branch != first.via.branch
    assert statuses(answer(tu, second, 430, 2.0)) == [480]
    assert tu.stats["flow_failed"] == 2 and tu.stats["flow_next_tried"] == 1


def test_the_next_flows_answer_is_the_callers():
    tu = make_tu(to_flows(PHONE, LAPTOP))
    (first,) = requests(tu.receive(request(), CALLER, 0.0), "INVITE")
    (second,) = requests(answer(tu, first, 430, 1.0), "INVITE")
    assert statuses(answer(tu, second, 486, 2.0)) == [486], "not the gone flow's stand-in"


def test_a_transport_error_on_a_flow_tries_the_next_flow():
    tu = make_tu(to_flows(PHONE, LAPTOP))
    tu.receive(request(), CALLER, 0.0)
    (key,) = tu.branches
    out = tu.transport_error(key, 0.5)
    (dest,) = destinations(out, "INVITE")
    assert dest.context.edge == "edge-3"


def test_an_in_dialog_request_goes_back_over_the_callers_flow():
    tu = make_tu(to_flows(PHONE))
    caller = Peer("TCP", "198.51.100.7", 50000, EdgeRoute("edge-1", 3, ("192.0.2.1", 5060), US))
    invite = request(extra=("Contact: <sip:alice@198.51.100.7:5060;transport=tcp>",))
    (forwarded,) = requests(tu.receive(invite, caller, 0.0), "INVITE")
    routes = forwarded.get_all("record-route")
    assert len(routes) == 2, "two flows over one transport: two entries"
    # The callee hangs up: its Route set is the Record-Route as received.
    route_lines = tuple(f"Route: {r}" for r in routes)
    bye = request("BYE", uri="sip:alice@198.51.100.7:5060;transport=tcp", branch="z9hG4bK-bye",
                  seq=2, to_tag="callee", extra=route_lines)
    callee = Peer("TCP", "203.0.113.5", 40001, EdgeRoute("edge-2", 7, ("192.0.2.1", 5060), US))
    out = tu.receive(bye, callee, 1.0)
    (dest,) = destinations(out, "BYE")
    assert dest.context.edge == "edge-1" and dest.context.conn == 3, "over the caller's connection"
    (sent_bye,) = requests(out, "BYE")
    assert not sent_bye.get_all("route"), "our own entries are consumed"


def test_a_forged_flow_token_is_refused_with_403():
    tu = make_tu(to_flows(PHONE))
    token = tu.services.flows.make(PHONE)
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    bye = request("BYE", seq=2, to_tag="x", extra=(f"Route: <sip:{US};transport=tcp;{FLOW_PARAM}={forged};lr>",))
    out = tu.receive(bye, CALLER, 0.0)
    assert statuses(out) == [403]
    assert not destinations(out, "BYE")
    assert tu.stats["flow_token_forged"] == 1


def named_contact(*flows: Flow) -> Application:
    """Routes to a contact whose host is a name, over ``flows``."""
    app = Application("flows-named")

    @app.request("INVITE")
    def route(call):
        first, *rest = [Target(parse_uri("sip:bob@phone.example;transport=tcp"), flow=f) for f in flows]
        return call.proxy([Target(first.uri, flow=first.flow, alternates=tuple(rest))])

    return app


def test_a_flow_is_neither_located_nor_blocked_nor_failed_over():
    # RFC 5626 §5.3: the flow is the one way to the UA, so the RFC 3263
    # machinery (location, blocklist, failover on 503) stays out of it.
    tu = make_tu(named_contact(PHONE, LAPTOP))
    tu.blocklist.block(Destination("TCP", *PHONE.peer).key, 0.0)
    out = tu.receive(request(), CALLER, 0.0)
    assert not [o for o in out if isinstance(o, Resolve)], "a flow's contact name is not looked up"
    (dest,) = destinations(out, "INVITE")
    assert (dest.context.edge, dest.host, dest.port) == ("edge-2", "203.0.113.5", 40001)
    (first,) = requests(out, "INVITE")
    out = answer(tu, first, 503, 1.0)
    # §16.7 step 6: the UA's 503 goes upstream as 500, no other destination tried.
    assert statuses(out) == [500] and not requests(out, "INVITE"), "a 503 is the UA's answer"
    assert tu.stats["dns_failover"] == 0


def test_an_ack_goes_over_the_callees_flow_without_a_lookup():
    tu = make_tu(to_flows(PHONE))
    (forwarded,) = requests(tu.receive(request(), CALLER, 0.0), "INVITE")
    assert statuses(answer(tu, forwarded, 200, 0.5)) == [200]
    # The caller's route set is the Record-Route of the 2xx, reversed (§12.1.2).
    route_lines = tuple(f"Route: {r}" for r in reversed(forwarded.get_all("record-route")))
    ack = request("ACK", uri="sip:bob@phone.example;transport=tcp", branch="z9hG4bK-ack", to_tag="callee",
                  extra=route_lines)
    # From a trusted network, so the dialog token's sender binding is not in play.
    out = tu.receive(ack, Peer("UDP", "127.0.0.1", 5060, EDGE), 1.0)
    assert not [o for o in out if isinstance(o, Resolve)], "the contact's name is not looked up"
    (dest,) = destinations(out, "ACK")
    assert dest.context.edge == "edge-2" and dest.context.conn == 7 and dest.context.flow
