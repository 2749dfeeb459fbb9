"""A call crossing UDP and WSS through the cluster (issue 20 part 4): the
WSS user is reached over its WebSocket only, through the edge that holds
it; RFC 5658 double Record-Route gives each side the port and transport it
reaches the cluster on, the WSS side's entry with its flow token; in-dialog
requests both ways find their side; once the WebSocket is gone a call gets
480 (the edge answered 430) and nothing is dialled."""

from __future__ import annotations

import uuid

import pytest

from cluster.proxy.flows import FLOW_PARAM
from cluster.sip import make_response, parse_name_addr
from tests.e2e.harness import SipAgent, wait_for
from tests.e2e.test_secure_transports import add_user, edge_status, register
from tests.e2e.secure import start_secure
from tests.support.pki import make_pki
from tests.support.streams import StreamUa

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def cluster(etcd_server, tmp_path_factory, pki):
    up = start_secure(etcd_server.endpoint, tmp_path_factory.mktemp("outbound-wss"), pki, transports=("wss",))
    yield up
    up.stop()


def is_(method: str, call_id: str):
    return lambda m: getattr(m, "method", None) == method and m.call_id == call_id


def test_a_call_between_udp_and_wss(cluster, pki):
    user = f"wsbob-{uuid.uuid4().hex[:6]}"
    password = add_user(cluster, user)
    bob = StreamUa("WSS", cluster.wss_port, pki.ca)
    call_id = f"wss-call-{uuid.uuid4().hex}"
    try:
        assert register(bob, user, password).status == 200
        with SipAgent() as caller:
            invite = caller.request("INVITE", f"sip:{user}@localhost", call_id=call_id, cseq=1,
                                    from_="sip:carol@example.org", to=f"sip:{user}@localhost",
                                    headers=[("Contact", caller.contact)])

            def delivered():
                caller.send(invite, cluster.port)
                return bob.receive(is_("INVITE", call_id), timeout=3)
            incoming = wait_for(delivered, timeout=60, what="the INVITE over WSS")
            assert incoming.via.transport == "WSS" and incoming.via.port == cluster.wss_port
            top, bottom = (parse_name_addr(r).uri for r in incoming.get_all("record-route"))
            # RFC 5658: bob's entry is the WSS port, with its flow token; the
            # caller's is the UDP port, without one (plain UDP).
            assert (top.port, top.transport, bottom.port, bottom.transport) == \
                (cluster.wss_port, "ws", cluster.port, None)
            assert top.param(FLOW_PARAM) and bottom.param(FLOW_PARAM) is None
            ok = make_response(incoming, 200, to_tag=bob.tag,
                               headers=[("Contact", bob.contact(user)),
                                        *[("Record-Route", r) for r in incoming.get_all("record-route")]])
            bob.send(ok)
            final, _ = caller.receive(lambda m: getattr(m, "status", 0) == 200 and m.call_id == call_id, 30)
            assert final is not None
            routes = list(reversed(final.get_all("record-route")))
            remote = str(final.contacts[0].uri)
            ack = caller.request("ACK", remote, call_id=call_id, cseq=1, from_="sip:carol@example.org",
                                 to=final.get("to"), headers=[("Route", r) for r in routes])
            caller.send(ack, cluster.port)
            assert bob.receive(is_("ACK", call_id), 30) is not None, "the ACK over bob's WebSocket"
            # bob hangs up: its route set is the Record-Route as received.
            bye = bob_request(bob, incoming, "BYE", 2)
            bob.send(bye)
            got, source = caller.receive(is_("BYE", call_id), 30)
            assert got is not None, "the BYE reaches the UDP caller"
            assert got.via.port == cluster.port and got.via.transport == "UDP", \
                "our Via names the UDP port the caller answers to"
            caller.answer(got, 200, source)
            done = bob.receive(lambda m: getattr(m, "status", 0) == 200 and m.cseq.method == "BYE", 30)
            assert done is not None
        before = edge_status(cluster)["connections"]["wss"]
        bob.close()
        wait_for(lambda: edge_status(cluster)["connections"]["wss"] < before, what="the WebSocket gone")
        with SipAgent() as caller:
            again = caller.request("INVITE", f"sip:{user}@localhost", call_id=f"{call_id}-2", cseq=1,
                                   from_="sip:carol@example.org", to=f"sip:{user}@localhost",
                                   headers=[("Contact", caller.contact)])
            response = caller.transact(again, cluster.port, timeout=30)
        assert response is not None and response.status == 480
        assert edge_status(cluster)["stats"]["flow_failed"] >= 1
    finally:
        bob.close()


def bob_request(bob: StreamUa, invite, method: str, cseq: int):
    """An in-dialog request from the callee of ``invite`` (§12.2.1.1)."""
    from cluster.sip import Request
    routes = invite.get_all("record-route")
    return Request(method, str(invite.contacts[0].uri), [
        ("Via", bob.via()), ("Max-Forwards", "70"), ("From", f"{invite.get('to')};tag={bob.tag}"),
        ("To", invite.get("from")), ("Call-ID", invite.call_id), ("CSeq", f"{cseq} {method}"),
        *[("Route", r) for r in routes]])
