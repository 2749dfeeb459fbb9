"""RFC 5626 outbound through the stateless edge, end to end (issue 20 part 4).

One ``sipcluster up`` (two workers, real etcd). A UA instance registers two
outbound flows (``+sip.instance``, ``reg-id`` 1 and 2) over two TCP
connections; calls to it arrive over the flow registered last, on the
connection it opened; when that connection is gone the edge answers 430 and
the worker tries the other flow; with both gone the caller gets 480 and the
edge never dials the Contact. The 200 says Require: outbound and Flow-Timer;
CRLF and STUN keep-alives are answered by the edge; a request carrying a
forged flow token gets 403.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
import urllib.request
import uuid

import pytest

from cluster.auth.digest import credential
from cluster.sip import KEEPALIVE, ParseError, Request, StreamFramer, make_response, parse_message
from cluster.sip.stun import MAGIC_COOKIE
from tests.e2e.harness import SipAgent, UpCluster, wait_for

pytestmark = pytest.mark.e2e

FLOW_TIMER = 25
ENV = {"SIPCLUSTER_WORKER_DIGEST_ALGORITHMS": "MD5",
       "SIPCLUSTER_WORKER_FLOW_TIMER": str(FLOW_TIMER)}
INSTANCE = f"urn:uuid:{uuid.uuid4()}"


@pytest.fixture(scope="module")
def cluster(etcd_server, tmp_path_factory):
    up = UpCluster(tmp_path_factory.mktemp("outbound"), workers=2, etcd=etcd_server.endpoint,
                   env=ENV).start()
    wait_for(lambda: len(up.worker_pids()) == 2, what="two workers in the ring")
    yield up
    up.stop()


class TcpFlow:
    """One UA connection to the edge: sends requests and responses, reads
    the messages the edge writes on it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.host, self.local_port = self.sock.getsockname()
        self.framer = StreamFramer()
        self.inbox: list = []

    def close(self) -> None:
        self.sock.close()

    def send(self, message) -> None:
        self.sock.sendall(message if isinstance(message, bytes) else message.to_bytes())

    def receive(self, match, timeout: float = 15.0):
        for i, message in enumerate(self.inbox):
            if match(message):
                return self.inbox.pop(i)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                return None
            for raw in self.framer.feed(data):
                if raw == KEEPALIVE:
                    continue
                try:
                    message = parse_message(raw)
                except ParseError:
                    continue
                if match(message):
                    return message
                self.inbox.append(message)
        return None

    def request(self, method: str, uri: str, *, call_id: str, cseq: int, aor: str, headers=()):
        fields = [("Via", f"SIP/2.0/TCP {self.host}:{self.local_port};branch=z9hG4bK{uuid.uuid4().hex[:16]};rport"),
                  ("Max-Forwards", "70"), ("From", f"<{aor}>;tag={uuid.uuid4().hex[:8]}"), ("To", f"<{aor}>"),
                  ("Call-ID", call_id), ("CSeq", f"{cseq} {method}"), *headers]
        return Request(method, uri, fields)

    def transact(self, request):
        branch = request.via.branch
        self.send(request)
        return self.receive(lambda m: not isinstance(m, Request) and m.via.branch == branch)


def register_flow(flow: TcpFlow, user: str, password: str, reg_id: int | None = None,
                  contact_port: int = 0, *, contact: str | None = None):
    """REGISTER over ``flow``, answering the digest challenge: an RFC 5626
    outbound Contact with ``reg_id``, or ``contact`` as given."""
    aor = f"sip:{user}@localhost"
    contact = contact or (f'<sip:{user}@127.0.0.1:{contact_port};transport=tcp;ob>;'
                          f'+sip.instance="<{INSTANCE}>";reg-id={reg_id}')
    call_id = f"reg-{reg_id}-{uuid.uuid4().hex}"
    headers = [("Contact", contact), ("Expires", "600"), ("Supported", "outbound, path")]
    request = flow.request("REGISTER", "sip:localhost", call_id=call_id, cseq=1, aor=aor, headers=headers)
    response = flow.transact(request)
    assert response is not None and response.status == 401, response
    field = credential(response.www_authenticates[0], username=user, password=password,
                       method="REGISTER", uri="sip:localhost", cnonce=uuid.uuid4().hex[:12])
    again = flow.request("REGISTER", "sip:localhost", call_id=call_id, cseq=2, aor=aor,
                         headers=[*headers, ("Authorization", str(field))])
    response = flow.transact(again)
    assert response is not None and response.status == 200, response
    return response


def call(cluster: UpCluster, user: str, answerers: list[TcpFlow], *, timeout: float = 15.0):
    """INVITE ``user`` from a trusted foreign caller over UDP; each flow in
    ``answerers`` answers the INVITE 486 if one reaches it. The caller's
    final status and the flow that was reached (or None)."""
    call_id = f"ob-{uuid.uuid4().hex}"
    with SipAgent() as caller:
        invite = caller.request("INVITE", f"sip:{user}@localhost", call_id=call_id, cseq=1,
                                from_="sip:carrier@example.org", to=f"sip:{user}@localhost",
                                headers=[("Contact", caller.contact)])
        caller.send(invite, cluster.port)
        reached = None
        deadline = time.monotonic() + timeout
        while reached is None and time.monotonic() < deadline:
            for flow in answerers:
                got = flow.receive(lambda m: isinstance(m, Request) and m.call_id == call_id, timeout=0.2)
                if got is not None:
                    reached = flow
                    flow.send(make_response(got, 486, to_tag="busy"))
                    break
            final, _ = caller.receive(lambda m: not isinstance(m, Request) and m.call_id == call_id
                                      and m.status >= 200, timeout=0.05)
            if final is not None and reached is None:
                caller.send(caller.ack_for(invite, final), cluster.port)
                return final.status, None
        response = caller.transact(invite, cluster.port, timeout=timeout)
        return (response.status if response is not None else 0), reached


def edge_status(cluster: UpCluster) -> dict:
    edge = next(m for m in cluster.status()["members"] if m["role"] == "edge")
    with urllib.request.urlopen(f"{edge['http']}/status", timeout=10) as reply:
        return json.loads(reply.read())


def closed(cluster: UpCluster, flow: TcpFlow) -> None:
    """Close ``flow`` and wait until the edge has seen it go."""
    before = edge_status(cluster)["tcp_connections"]
    flow.close()
    wait_for(lambda: edge_status(cluster)["tcp_connections"] < before, what="the edge to see the close")


def test_outbound_flows_through_the_edge(cluster):
    user, password = "obalice", uuid.uuid4().hex
    cluster.user("add", f"{user}@localhost", password=password)
    # The Contact's port listens: the edge must never dial it.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.setblocking(False)
    contact_port = listener.getsockname()[1]
    first, second = TcpFlow(cluster.port), TcpFlow(cluster.port)
    try:
        # §4.4.1 CRLF keep-alive on a connection: answered with CRLF.
        first.sock.sendall(KEEPALIVE)
        first.sock.settimeout(10)
        assert first.sock.recv(16) == b"\r\n"
        ok = register_flow(first, user, password, 1, contact_port)
        assert ok.get("require") == "outbound" and ok.get("flow-timer") == str(FLOW_TIMER)
        register_flow(second, user, password, 2, contact_port)
        # The flow registered last takes the call, once the location caches have it.
        wait_for(lambda: call(cluster, user, [first, second])[1] is second, timeout=60,
                 what="a call over the second flow")
        closed(cluster, second)
        status, reached = call(cluster, user, [first])
        assert (status, reached) == (486, first), "430 on the gone flow, then the instance's other flow"
        closed(cluster, first)
        status, reached = call(cluster, user, [])
        assert status == 480, "no flow left: 480, never 430, upstream"
        with pytest.raises(BlockingIOError):
            listener.accept()
        assert edge_status(cluster)["stats"]["flow_failed"] >= 3
    finally:
        first.close()
        second.close()
        listener.close()


def test_stun_keepalive_on_the_udp_port(cluster):
    transaction = os.urandom(12)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(2)
        request = struct.pack("!HHI12s", 0x0001, 0, MAGIC_COOKIE, transaction)
        response = None
        for _ in range(10):
            sock.sendto(request, ("127.0.0.1", cluster.port))
            try:
                response, _ = sock.recvfrom(1024)
                break
            except TimeoutError:
                continue
        assert response is not None, "no STUN answer"
        kind, _, cookie, txid = struct.unpack_from("!HHI12s", response)
        assert (kind, cookie, txid) == (0x0101, MAGIC_COOKIE, transaction)
        _, _, x_port = struct.unpack_from("!BBH", response, 24)
        x_address = struct.unpack_from("!I", response, 28)[0]
        assert x_port ^ (MAGIC_COOKIE >> 16) == sock.getsockname()[1]
        assert socket.inet_ntoa(struct.pack("!I", x_address ^ MAGIC_COOKIE)) == "127.0.0.1"


def test_a_forged_flow_token_gets_403(cluster):
    with SipAgent() as agent:
        bye = agent.request("BYE", "sip:somebody@127.0.0.1:5999", call_id=f"forged-{uuid.uuid4().hex}",
                            cseq=2, from_="sip:x@example.org", to="<sip:y@localhost>;tag=abc",
                            headers=[("Route", f"<sip:127.0.0.1:{cluster.port};sfl=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA;lr>")])
        response = agent.transact(bye, cluster.port)
    assert response is not None and response.status == 403
