"""The edge's link loop survives a bug met by one envelope."""

from __future__ import annotations

import socket

import trio

from cluster.config import load_config
from cluster.link import Envelope, pack_array, pack_frame
from nodes.edge.node import EdgeNode
from tests.e2e.harness import free_port_pair


class ScriptedInbox:
    """Gives the loop one batch, then waits forever."""

    def __init__(self, batch: list[bytes]) -> None:
        self.batch = batch

    async def receive_batch(self) -> list[bytes]:
        if self.batch:
            batch, self.batch = self.batch, []
            return batch
        await trio.sleep_forever()

    def close(self) -> None:
        return None


def test_a_bug_met_by_one_envelope_costs_that_message_not_the_loop():
    edge = EdgeNode(load_config(None, env={}, overrides={"edge.listen": [f"udp:127.0.0.1:{free_port_pair()}"],
                                                         "cluster.node_id": "edge-l"}))
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(10)
    local = next(iter(edge.udp))
    bad = Envelope("out", "edge-l", "UDP", receiver.getsockname(), local, b"boom", None, 0, None, sender="w")
    good = Envelope("out", "edge-l", "UDP", receiver.getsockname(), local, b"delivered", None, 0, None,
                    sender="w")
    edge.inbox.close()
    edge.inbox = ScriptedInbox([pack_frame([pack_array(bad), pack_array(good)])])
    real = edge.egress

    def egress(env):
        if env.data == b"boom":
            raise RuntimeError("a bug in egress")
        real(env)

    edge.egress = egress

    async def main():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(edge._link_loop)
            with trio.fail_after(30):
                while edge.stats["sent_udp"] < 1:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
        assert receiver.recvfrom(100)[0] == b"delivered"
    finally:
        receiver.close()
        for listener in edge.udp.values():
            listener.sock.close()
    assert edge.stats["internal_error"] == 1
