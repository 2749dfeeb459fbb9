"""CURVE links and the ZAP decision on real sockets (loopback TCP)."""

from __future__ import annotations

import logging
import socket

import trio
import zmq

from cluster.link import Inbox, LinkAuthenticator, LinkGuard, LinkKeys, Outbox, node_context
from cluster.sharding.membership import EDGE, WORKER, Member


def _member(role: str, node_id: str, keys: LinkKeys) -> Member:
    return Member(id=node_id, role=role, link="tcp://127.0.0.1:1", curve_key=keys.public.decode())


async def _until(predicate, what: str) -> None:
    with trio.fail_after(30):
        while not predicate():
            await trio.sleep(0.02)


def test_members_of_the_accepted_role_get_through_and_the_rest_are_counted(caplog):
    caplog.set_level(logging.WARNING, "sipcluster.link")

    async def main():
        context = node_context()
        server, edge, worker = LinkKeys.generate(), LinkKeys.generate(), LinkKeys.generate()
        guard = LinkGuard(accept=(EDGE,))
        authenticator = LinkAuthenticator(context, guard, hold=0.5)
        inbox = Inbox(context, "tcp://127.0.0.1:0", keys=server)
        authenticator.watch(inbox)
        clients = zmq.Context()
        async with trio.open_nursery() as nursery:
            await nursery.start(authenticator.run)
            # The edge connects before this node's view holds it (a join):
            # held, then admitted once the membership delivers its record.
            member = Outbox(clients, keys=edge)
            member.connect(inbox.endpoint, server.public)
            await trio.sleep(0.1)
            guard.update([_member(EDGE, "e1", edge), _member(WORKER, "w1", worker)])
            with trio.fail_after(30):
                while not member.send(inbox.endpoint, b"from a member"):
                    await trio.sleep(0.02)
                assert await inbox.receive_batch() == [b"from a member"]
            assert sum(guard.failures.values()) == 0
            # A stranger's key, and a worker's (workers never send to workers).
            for reason, keys in (("unknown_key", LinkKeys.generate()), ("wrong_role", worker)):
                outbox = Outbox(clients, keys=keys)
                outbox.connect(inbox.endpoint, server.public)
                await _until(lambda reason=reason: guard.failures[reason] == 1, reason)
                assert not outbox.send(inbox.endpoint, b"x")
                outbox.close()
            # No key at all: the handshake fails before ZAP.
            plain = Outbox(clients)
            plain.connect(inbox.endpoint)
            await _until(lambda: guard.failures["handshake"] >= 1, "plaintext refusal")
            plain.close()
            # Bytes that are no ZMTP greeting.
            before = guard.failures["handshake"]
            host, port = inbox.endpoint[len("tcp://"):].rsplit(":", 1)
            with socket.create_connection((host, int(port))) as raw:
                raw.sendall(b"GET / HTTP/1.1\r\n\r\n" + bytes(range(256)))
                await _until(lambda: guard.failures["handshake"] > before, "garbage refusal")
            # The member's link still works; nothing else arrived.
            assert member.send(inbox.endpoint, b"still here")
            with trio.fail_after(30):
                assert await inbox.receive_batch() == [b"still here"]
            member.close()
            nursery.cancel_scope.cancel()
        authenticator.close()
        inbox.close()
        clients.destroy(0)
    trio.run(main)
    messages = [r.getMessage() for r in caplog.records]
    assert any("refused (unknown_key)" in m and "127.0.0.1" in m for m in messages)
    assert any("refused (wrong_role)" in m and "a worker's" in m for m in messages)
    assert any("refused (handshake)" in m for m in messages)


def test_refusals_are_logged_at_most_once_per_interval_and_all_counted(caplog):
    caplog.set_level(logging.WARNING, "sipcluster.link")
    guard = LinkGuard(accept=(EDGE,), log_interval=10.0)
    stranger = LinkKeys.generate().public
    for i in range(1000):
        assert guard.decide(b"CURVE", stranger, "192.0.2.1", now=i * 0.001) is None
    assert guard.decide(b"CURVE", stranger, "192.0.2.1", now=11.0) is None
    assert guard.failures["unknown_key"] == 1001
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "999 more refused" in lines[1]


def test_a_member_that_leaves_is_refused_and_a_node_without_a_key_never_admitted():
    guard = LinkGuard(accept=(WORKER,))
    keys = LinkKeys.generate()
    guard.update([_member(WORKER, "w1", keys), Member(id="old", role=WORKER, link="tcp://h:1")])
    assert guard.decide(b"CURVE", keys.public, "", now=0) == "w1"
    guard.update([])
    assert guard.decide(b"CURVE", keys.public, "", now=1) is None
    assert guard.failures["unknown_key"] == 1
