"""Envelopes and the ZeroMQ adapter (real sockets on loopback)."""

from __future__ import annotations

import pytest
import trio
import zmq

from cluster.link import Envelope, Inbox, LinkError, Outbox, pack, unpack
import trio.lowlevel
import trio.testing


def _env(i: int = 0) -> Envelope:
    return Envelope("in", "edge-1", "UDP", ("192.0.2.1", 5060 + i), ("127.0.0.1", 5060),
                    b"OPTIONS sip:x SIP/2.0\r\n\r\n", conn=None, ts_ns=123, trace="00-ab-cd-01",
                    advertise="127.0.0.1:5060", sender="edge-1")


def test_envelope_round_trip():
    env = _env()
    assert unpack(pack(env)) == env
    out = Envelope("out", "edge-1", "TCP", ("192.0.2.9", 5070), ("127.0.0.1", 5060), b"x", conn=7)
    assert unpack(pack(out)) == out


@pytest.mark.parametrize("raw", [b"", b"\xc1", b"\x93\x01\x02\x03", pack(_env())[:-3]])
def test_garbage_envelopes_raise_link_error(raw):
    with pytest.raises(LinkError):
        unpack(raw)


def test_unknown_version_rejected():
    import msgpack
    raw = msgpack.packb({"v": 99, "kind": "in", "edge": "e", "transport": "UDP",
                        "src": ["h", 1], "local": ["h", 2], "data": b""})
    with pytest.raises(LinkError, match="version"):
        unpack(raw)


def test_push_pull_batches_and_undeliverable():
    async def main():
        ctx = zmq.Context()
        inbox = Inbox(ctx, "tcp://127.0.0.1:0")
        outbox = Outbox(ctx)
        outbox.connect(inbox.endpoint)
        got: list[bytes] = []
        with trio.fail_after(30):
            # IMMEDIATE: sends fail until the connection is up, then succeed.
            while not outbox.send(inbox.endpoint, pack(_env(0))):
                await trio.sleep(0.01)
            sent = 1
            for i in range(1, 2000):
                if outbox.send(inbox.endpoint, pack(_env(i % 50))):
                    sent += 1
            while len(got) < sent:
                got.extend(await inbox.receive_batch())
        assert len(got) == sent and sent > 1000
        assert unpack(got[-1]).kind == "in"
        # A peer that does not exist: nothing is queued, the send says so.
        dead = "tcp://127.0.0.1:1"
        assert outbox.send(dead, b"x") is False
        assert outbox.undeliverable >= 1
        inbox.close()
        outbox.close()
        ctx.term()
    trio.run(main)


def test_reconnect_after_peer_restart():
    async def main():
        ctx = zmq.Context()
        inbox = Inbox(ctx, "tcp://127.0.0.1:0")
        endpoint = inbox.endpoint
        outbox = Outbox(ctx)
        with trio.fail_after(30):
            while not outbox.send(endpoint, b"one"):
                await trio.sleep(0.01)
            assert await inbox.receive_batch() == [b"one"]
            inbox.close()
            # Peer gone: sends are refused, not queued.
            while outbox.send(endpoint, b"lost?"):
                await trio.sleep(0.01)
            inbox = Inbox(ctx, endpoint)
            while not outbox.send(endpoint, b"two"):
                await trio.sleep(0.02)
            batch = await inbox.receive_batch()
        assert batch[-1] == b"two"
        inbox.close()
        outbox.close()
        ctx.term()
    trio.run(main)


def test_receive_batch_yields_under_sustained_load():
    """A busy inbox must not starve other tasks (the lease keep-alive)."""
    async def main():
        ctx = zmq.Context()
        inbox = Inbox(ctx, "tcp://127.0.0.1:0")
        outbox = Outbox(ctx, hwm=100000)
        with trio.fail_after(30):
            while not outbox.send(inbox.endpoint, b"x"):
                await trio.sleep(0.01)
        ticks = 0

        async def other_task():
            nonlocal ticks
            while True:
                await trio.lowlevel.checkpoint()
                ticks += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(other_task)
            for _ in range(200):
                for _ in range(50):
                    outbox.send(inbox.endpoint, b"y")
                # Messages are always ready here: without a checkpoint inside
                # receive_batch the other task would never run.
                got = []
                while len(got) < 1:
                    got = await inbox.receive_batch(limit=10)
            nursery.cancel_scope.cancel()
        assert ticks > 50
        inbox.close()
        outbox.close()
        ctx.term()
    trio.run(main)


def test_each_message_after_a_wait_wakes_the_inbox():
    """The moderate-load path: the inbox drains, sleeps on ZMQ_FD, and a
    message sent while it sleeps wakes it, every time (no lost edge of the
    descriptor now that the wait follows zmq.Again directly)."""
    async def main():
        ctx = zmq.Context()
        inbox = Inbox(ctx, "tcp://127.0.0.1:0")
        outbox = Outbox(ctx)
        with trio.fail_after(60):
            while not outbox.send(inbox.endpoint, b"first"):
                await trio.sleep(0.01)
            assert await inbox.receive_batch() == [b"first"]
            got: list[list[bytes]] = []

            async def receive():
                got.append(await inbox.receive_batch())

            for i in range(200):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(receive)
                    # Let the receiver drain to zmq.Again and block on the descriptor.
                    await trio.testing.wait_all_tasks_blocked()
                    assert outbox.send(inbox.endpoint, b"m%d" % i)
                assert got[-1] == [b"m%d" % i]
            assert len(got) == 200
        inbox.close()
        outbox.close()
        ctx.term()
    trio.run(main)
