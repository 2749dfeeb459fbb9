"""An edge reports ready only when it serves SIP (issue 18.6)."""

from __future__ import annotations

from types import SimpleNamespace

from cluster.config import load_config
from cluster.link import node_keys
from cluster.sharding.ring import Ring
from nodes.edge.node import EdgeNode
from tests.e2e.harness import free_port_pair
from tests.support.etcd import free_port


def test_an_edge_with_a_ring_is_not_ready_until_its_sip_sockets_open():
    # The edge opens its SIP sockets only once a worker link is live; before
    # that a Service or load balancer sending it traffic would get nothing
    # back (a TCP connect is refused), so /ready must say no.
    edge = EdgeNode(load_config(None, env={}, overrides={"edge.listen": [f"udp:127.0.0.1:{free_port_pair()}"],
                                                         "cluster.node_id": "edge-r"}))
    try:
        edge.membership = SimpleNamespace(ready=True)  # type: ignore[assignment]
        link = f"tcp://127.0.0.1:{free_port()}"
        edge.forwarder.update(Ring(["w1"]), {"w1": link}, server_keys={link: node_keys(None).public})
        ready, why = edge.readiness()
        assert not ready and "SIP sockets" in why
        edge.sip_open = True  # what the edge's run loop sets when it opens them
        assert edge.readiness() == (True, "ready")
    finally:
        edge.inbox.close()
