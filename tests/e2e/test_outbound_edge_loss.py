"""An RFC 5626 client's edge is lost (issue 18 part 2, issue 20): ``sipcluster
up`` with two edges and two workers as separate processes, real etcd.

A UA instance registers one outbound flow (``;ob``, ``+sip.instance``,
``reg-id``) over TCP through edge 1. Calls to it, entering through edge 2,
reach it over that connection. Edge 1 is killed with SIGKILL: the flow is
gone with it, and the cluster may not dial the Contact instead (§5.3: a
flow is used or nothing). While edge 1 is down, the worker cannot hand the
INVITE to its link (a transport error on the flow); once the supervisor has
restarted it, edge 1 answers the worker 430 Flow Failed for a connection it
does not hold. Either way the worker has no other flow of the instance and
the caller gets 480 at once (430 means nothing beyond the authoritative
proxy, §11.5); the UA is never reached. Once the UA has re-registered the same reg-id over a
connection to edge 2 (§4.2.1: a client whose flow failed registers again),
calls reach it again — whether or not edge 1 is back by then.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import urllib.request
import uuid

import pytest

from cluster.sip import Request, make_response
from tests.e2e.harness import SipAgent, UpCluster, wait_for
from tests.e2e.test_outbound import ENV, TcpFlow, register_flow

pytestmark = pytest.mark.e2e

EDGE_PORT_STEP = 10   # cluster.local: edge N listens on the first port + 10 (N - 1)


@pytest.fixture(scope="module")
def cluster(etcd_server, tmp_path_factory):
    up = UpCluster(tmp_path_factory.mktemp("edge-loss"), workers=2, etcd=etcd_server.endpoint,
                   env=ENV, extra=["--edges", "2"]).start()
    wait_for(lambda: len(up.worker_pids()) == 2 and len(edge_pids(up)) == 2, timeout=90,
             what="two workers and two edges")
    yield up
    up.stop()


def edge_pids(cluster: UpCluster) -> dict[str, int]:
    try:
        return {m["id"]: m["pid"] for m in cluster.status()["members"] if m["role"] == "edge"}
    except AssertionError:   # etcd not readable for a moment
        return {}


def edge_stats(cluster: UpCluster, edge: str) -> dict:
    """The ``stats`` of one edge's status page ({} while it cannot be read)."""
    try:
        http = next(m["http"] for m in cluster.status()["members"] if m["id"] == edge)
        with urllib.request.urlopen(f"{http}/status", timeout=10) as reply:
            return json.loads(reply.read())["stats"]
    except (AssertionError, StopIteration, OSError, ValueError, KeyError):
        return {}


def closed_by_peer(flow: TcpFlow) -> bool:
    """The edge closed the connection (what is still in flight, an ACK, is read and dropped)."""
    flow.sock.settimeout(0.5)
    try:
        while data := flow.sock.recv(65536):
            del data
        return True
    except TimeoutError:
        return False
    except ConnectionError:
        return True


def call(port: int, user: str, answerer: TcpFlow | None, *, timeout: float = 20.0) -> tuple[int, bool]:
    """INVITE ``user`` from a trusted foreign caller over UDP through the edge
    on ``port``; if the INVITE reaches ``answerer`` it answers 486. The
    caller's final status (0: none within ``timeout``) and whether the UA
    was reached."""
    call_id = f"edge-loss-{uuid.uuid4().hex}"
    reached = False
    with SipAgent() as caller:
        invite = caller.request("INVITE", f"sip:{user}@localhost", call_id=call_id, cseq=1,
                                from_="sip:carrier@example.org", to=f"sip:{user}@localhost",
                                headers=[("Contact", caller.contact)])
        caller.send(invite, port)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if answerer is not None and not reached:
                got = answerer.receive(lambda m: isinstance(m, Request) and m.call_id == call_id, timeout=0.2)
                if got is not None:
                    reached = True
                    answerer.send(make_response(got, 486, to_tag="busy"))
            final, _ = caller.receive(lambda m: not isinstance(m, Request) and m.call_id == call_id
                                      and m.status >= 200, timeout=0.1)
            if final is not None:
                caller.send(caller.ack_for(invite, final), port)
                return final.status, reached
    return 0, reached


def test_a_lost_edge_answers_480_until_the_client_registers_through_another(cluster):
    user, password = "edgeloss", uuid.uuid4().hex
    cluster.user("add", f"{user}@localhost", password=password)
    first_port, second_port = cluster.port, cluster.port + EDGE_PORT_STEP
    # The Contact's port listens: the cluster must never dial it.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.setblocking(False)
    contact_port = listener.getsockname()[1]
    flow = TcpFlow(first_port)
    again: TcpFlow | None = None
    try:
        register_flow(flow, user, password, 1, contact_port)
        # Through the other edge, the call reaches the UA over its flow on edge 1
        # (once the location caches have the binding).
        wait_for(lambda: call(second_port, user, flow) == (486, True), timeout=60,
                 what="a call through edge 2 over the flow on edge 1")

        pid = edge_pids(cluster)["edge-1"]
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: closed_by_peer(flow), timeout=30, what="edge 1's connection to close with it")
        flow.close()
        # The flow is gone: 480 for the caller, whether the worker finds edge 1's
        # link down or the restarted edge 1 answers 430 for a connection it
        # does not hold; never a 2xx, 430 or a connection to the Contact.
        status, _ = call(second_port, user, None)
        assert status == 480, status
        # Edge 1 back (the supervisor restarts it), without the connection:
        # it answers the worker 430 Flow Failed for the flow, the caller
        # still gets 480.
        wait_for(lambda: edge_pids(cluster).get("edge-1") not in (None, pid), timeout=60,
                 what="edge 1 restarted")
        wait_for(lambda: call(second_port, user, None)[0] == 480
                 and edge_stats(cluster, "edge-1").get("flow_failed", 0) >= 1, timeout=60,
                 what="the restarted edge 1 to answer 430 for the flow it no longer holds")
        with pytest.raises(BlockingIOError):
            listener.accept()

        # The UA registers the same instance and reg-id again through edge 2.
        again = TcpFlow(second_port)
        register_flow(again, user, password, 1, contact_port)
        wait_for(lambda: call(second_port, user, again) == (486, True), timeout=60,
                 what="a call reaching the UA over its new flow on edge 2")
        # The restarted edge 1 hands calls to the new flow too.
        wait_for(lambda: call(first_port, user, again) == (486, True), timeout=60,
                 what="a call through the restarted edge 1 over the flow on edge 2")
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        flow.close()
        if again is not None:
            again.close()
        listener.close()
