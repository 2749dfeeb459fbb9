"""SIP over TLS and WSS through a running cluster (issue 20.1-20.3).

One ``sipcluster up --listen HOST:PORT --listen tls:… --listen wss:…
--tls-cert … --tls-key …`` (certificates from a test CA) serves the module.
Clients are Python's ssl module (TLS) and wsproto over ssl (WSS): they
register with digest credentials, send OPTIONS, and a UDP caller calls a user
registered over TLS (INVITE, 200, ACK, BYE all crossing UDP ↔ TLS)."""

from __future__ import annotations

import json
import socket
import ssl
import urllib.request
import uuid

import pytest

from cluster.sip import Request
from tests.e2e.harness import SipAgent, UpCluster, answer_challenge, wait_for
from tests.e2e.secure import start_secure
from tests.support.pki import make_pki
from tests.support.streams import StreamUa

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def cluster(etcd_server, tmp_path_factory, pki):
    # Outgoing TLS trusts the test CA only.
    up = start_secure(etcd_server.endpoint, tmp_path_factory.mktemp("secure"), pki, transports=("tls", "wss"),
                      env={"SIPCLUSTER_EDGE_TLS_CA": str(pki.ca)}, workers=1)
    yield up
    up.stop()


def edge_status(cluster: UpCluster) -> dict:
    (edge,) = [m for m in cluster.status()["members"] if m["role"] == "edge"]
    return edge["status"]


def add_user(cluster: UpCluster, name: str) -> str:
    password = f"pw-{uuid.uuid4().hex[:8]}"
    cluster.user("add", f"{name}@localhost", password=password)
    return password


def request(ua: StreamUa, method: str, uri: str, *, user: str, to: str | None = None, cseq: int = 1,
            call_id: str | None = None, headers=()) -> Request:
    return Request(method, uri, [
        ("Via", ua.via()), ("Max-Forwards", "70"), ("From", f"<sip:{user}@localhost>;tag={ua.tag}"),
        ("To", f"<{to or f'sip:{user}@localhost'}>"), ("Call-ID", call_id or uuid.uuid4().hex),
        ("CSeq", f"{cseq} {method}"), *headers])


def register(ua: StreamUa, user: str, password: str):
    first = request(ua, "REGISTER", "sip:localhost", user=user,
                    headers=[("Contact", ua.contact(user)), ("Expires", "300")])
    response = ua.transact(first)
    assert response is not None and response.status == 401, response
    again = answer_challenge(None, first, response, username=user, password=password)
    return ua.transact(again)


def test_status_lists_every_listener(cluster):
    listeners = edge_status(cluster)["listeners"]
    assert f"udp:127.0.0.1:{cluster.port}" in listeners
    assert f"tcp:127.0.0.1:{cluster.port}" in listeners
    assert f"tls:127.0.0.1:{cluster.tls_port}" in listeners
    assert f"wss:127.0.0.1:{cluster.wss_port}" in listeners


@pytest.mark.parametrize("transport", ["TLS", "WSS"])
def test_options_and_register_over_a_secure_transport(cluster, pki, transport):
    port = cluster.tls_port if transport == "TLS" else cluster.wss_port
    user = f"{transport.lower()}-{uuid.uuid4().hex[:6]}"
    password = add_user(cluster, user)
    ua = StreamUa(transport, port, pki.ca)
    try:
        options = request(ua, "OPTIONS", f"sip:127.0.0.1:{port};transport={ua.uri_transport}", user=user)
        response = ua.transact(options)
        assert response is not None and response.status == 200
        # RFC 3581 rport; RFC 7118 §5: a WSS client's Via host is an .invalid
        # name, so received says where it really is (RFC 3261 §18.2.1).
        assert response.via.rport == ua.local[1]
        assert response.via.received == (None if transport == "TLS" else "127.0.0.1")
        registered = register(ua, user, password)
        assert registered is not None and registered.status == 200, registered
        (contact,) = registered.contacts
        assert contact.uri.host == ua.contact_host.split(":")[0]
        assert contact.uri.transport == ua.uri_transport
    finally:
        ua.close()
    stats = edge_status(cluster)["stats"]
    assert stats.get(f"sent_{transport.lower()}", 0) >= 3


def test_a_call_between_a_udp_caller_and_a_tls_user(cluster, pki):
    user = f"bob-{uuid.uuid4().hex[:6]}"
    password = add_user(cluster, user)
    bob = StreamUa("TLS", cluster.tls_port, pki.ca)
    try:
        assert register(bob, user, password).status == 200
        call_id = f"tls-call-{uuid.uuid4().hex}"
        with SipAgent() as caller:
            invite = caller.request("INVITE", f"sip:{user}@localhost", call_id=call_id, cseq=1,
                                    from_="sip:carol@example.org", to=f"sip:{user}@localhost",
                                    headers=[("Contact", caller.contact)])

            def answered():
                # The cache of registrations may lag a moment behind the 200.
                caller.send(invite, cluster.port)
                return bob.receive(lambda m: getattr(m, "method", None) == "INVITE"
                                   and m.call_id == call_id, timeout=3)
            incoming = wait_for(answered, timeout=60, what="the INVITE over TLS")
            assert incoming.via.transport == "TLS"
            # Double Record-Route (RFC 5658): bob reaches the cluster over TLS.
            assert "transport=tls" in incoming.get_all("record-route")[0]
            from cluster.sip import make_response
            ok = make_response(incoming, 200, to_tag=bob.tag,
                               headers=[("Contact", bob.contact(user)),
                                        *[("Record-Route", rr) for rr in incoming.get_all("record-route")]])
            bob.send(ok)
            final, _ = caller.receive(lambda m: getattr(m, "status", 0) == 200 and m.call_id == call_id, 30)
            assert final is not None
            routes = [r for r in reversed(final.get_all("record-route"))]
            remote = final.contacts[0].uri
            ack = caller.request("ACK", str(remote), call_id=call_id, cseq=1, from_="sip:carol@example.org",
                                 to=final.get("to"), headers=[("Route", r) for r in routes])
            caller.send(ack, cluster.port)
            assert bob.receive(lambda m: getattr(m, "method", None) == "ACK" and m.call_id == call_id, 30)
            bye = caller.request("BYE", str(remote), call_id=call_id, cseq=2, from_="sip:carol@example.org",
                                 to=final.get("to"), headers=[("Route", r) for r in routes])
            caller.send(bye, cluster.port)
            got = bob.receive(lambda m: getattr(m, "method", None) == "BYE" and m.call_id == call_id, 30)
            assert got is not None
            bob.send(make_response(got, 200))
            done, _ = caller.receive(lambda m: getattr(m, "status", 0) == 200 and m.call_id == call_id
                                     and m.cseq.method == "BYE", 30)
            assert done is not None
    finally:
        bob.close()


def test_bad_input_on_the_secure_ports_is_counted_and_the_edge_goes_on(cluster, pki):
    # Plain text on the TLS port; a malformed upgrade on the WSS port.
    with socket.create_connection(("127.0.0.1", cluster.tls_port), timeout=20) as sock:
        sock.sendall(b"OPTIONS sip:x SIP/2.0\r\n\r\n")
        try:
            while sock.recv(4096):
                pass
        except ConnectionResetError:
            pass
    context = ssl.create_default_context(cafile=str(pki.ca))
    with context.wrap_socket(socket.create_connection(("127.0.0.1", cluster.wss_port), timeout=20),
                             server_hostname="localhost") as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 400 ")
    stats = wait_for(lambda: (s := edge_status(cluster)["stats"]).get("tls_handshake_failed")
                     and s.get("ws_bad_upgrade") and s, what="the counters")
    assert stats["tls_handshake_failed"] >= 1 and stats["ws_bad_upgrade"] >= 1
    metrics = urllib.request.urlopen(edge_status(cluster)["metrics"], timeout=10).read().decode()
    assert 'sipcluster_edge_stream_events_total{event="ws_bad_upgrade"' in metrics
    # Still serving both.
    ua = StreamUa("WSS", cluster.wss_port, pki.ca)
    try:
        response = ua.transact(request(ua, "OPTIONS", f"sip:127.0.0.1:{cluster.wss_port};transport=ws", user="x"))
        assert response is not None and response.status == 200
    finally:
        ua.close()
    assert json.dumps(edge_status(cluster)["connections"])


def test_outgoing_tls_to_a_transport_tls_target(cluster, pki):
    """The worker asks the edge to send on TLS (RFC 3261 §26.2); the edge
    connects, checks the peer's certificate against edge.tls_ca, and the
    peer's answer comes back on that connection."""
    import threading

    from cluster.sip import StreamFramer, make_response, parse_message
    peer_cert, peer_key = pki.server("tls-peer", "tls-peer", ips=("127.0.0.1",))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(str(peer_cert), str(peer_key))
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(60)
    port = listener.getsockname()[1]
    seen: list = []

    def peer() -> None:
        raw, _ = listener.accept()
        with server.wrap_socket(raw, server_side=True) as sock:
            sock.settimeout(60)
            framer = StreamFramer(65535)
            while True:
                for data in framer.feed(sock.recv(65536)):
                    message = parse_message(data)
                    seen.append(message)
                    if getattr(message, "method", None) == "INVITE":
                        sock.sendall(make_response(message, 486, to_tag="peer").to_bytes())
                    elif getattr(message, "method", None) == "ACK":
                        return

    thread = threading.Thread(target=peer, daemon=True)
    thread.start()
    try:
        with SipAgent() as caller:
            call_id = f"out-tls-{uuid.uuid4().hex}"
            invite = caller.request("INVITE", f"sip:peer@127.0.0.1:{port};transport=tls", call_id=call_id,
                                    cseq=1, from_="sip:carol@example.org", to=f"sip:peer@127.0.0.1:{port}",
                                    headers=[("Contact", caller.contact)])
            response = caller.transact(invite, cluster.port, timeout=30)
            assert response is not None and response.status == 486
        thread.join(30)
    finally:
        listener.close()
    (received,) = [m for m in seen if getattr(m, "method", None) == "INVITE"]
    assert received.via.transport == "TLS"
    assert edge_status(cluster)["stats"].get("sent_tls", 0) >= 1
