"""A worker sends what one link batch produces for an edge as one frame.

While framing (a link batch or a timer run), messages for an edge that reads
version-2 envelopes queue up and leave in one ZeroMQ message per edge; an
edge of an older version still gets one version-1 envelope per message. A
frame the link refuses counts its messages as dropped and gives the client
transactions among them a transport error (§17.1.4).
"""

from __future__ import annotations

import time

import msgpack
import trio

from cluster.config import load_config
from cluster.link import Envelope, pack_array, pack_frame, pack_v2, unpack_frame
from nodes.worker.node import WorkerNode
from nodes.worker.services import Services

EDGE = "edge-1"


class Link:
    def __init__(self, up: bool = True) -> None:
        self.up = up
        self.frames: list[bytes] = []

    def send(self, endpoint: str, data: bytes) -> bool:
        if self.up:
            self.frames.append(data)
        return self.up

    def connect(self, endpoint: str) -> None:
        return None


def _worker(link: Link, *, reads_frames: bool = True) -> WorkerNode:
    services = Services(domains=["localhost"], trusted=["127.0.0.0/8"],
                        nonce_secret=b"test-nonce-secret-0123456", nonce_ttl=300,
                        locations=None, users=None)
    worker = WorkerNode(load_config(None, env={}, overrides={"cluster.node_id": "w-frames"}),
                        services=services)
    worker.inbox.close()
    worker.links.outbox = link
    worker.links.edges = {EDGE: "sink"}
    worker.links.array_edges = {EDGE} if reads_frames else set()
    return worker


def _invite(n: int) -> Envelope:
    data = (
        f"INVITE sip:bob@127.0.0.1:5070 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-frames-{n}\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:alice@bench.invalid>;tag=a1\r\nTo: <sip:bob@localhost>\r\n"
        f"Call-ID: frames-{n}@127.0.0.1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    return Envelope("in", EDGE, "UDP", ("127.0.0.1", 5061), ("127.0.0.1", 5060), data, None,
                    time.time_ns(), None, "127.0.0.1:5060", EDGE)


def _handle_batch(worker: WorkerNode, envelopes: list[Envelope]) -> None:
    """What the link reader does around one batch, without the socket."""
    with worker.links.framed(worker._failed(1000.0)):
        for env in envelopes:
            worker.receive(env, 1000.0)


def test_one_batch_leaves_as_one_frame():
    link = Link()
    worker = _worker(link)
    _handle_batch(worker, [_invite(1), _invite(2), _invite(3)])
    assert len(link.frames) == 1
    sent = unpack_frame(link.frames[0])
    starts = [env.data.split(b"\r\n", 1)[0] for env in sent]
    assert starts.count(b"SIP/2.0 100 Trying") == 3
    assert sum(s.startswith(b"INVITE ") for s in starts) == 3
    assert worker.stats["sent"] == 6 and worker.stats["sent_frames"] == 1


def test_an_edge_of_an_older_version_gets_version_1_envelopes():
    link = Link()
    worker = _worker(link, reads_frames=False)
    _handle_batch(worker, [_invite(1), _invite(2)])
    assert len(link.frames) == 4
    assert all(isinstance(msgpack.unpackb(frame), dict) for frame in link.frames)


def test_outside_a_batch_messages_leave_at_once():
    link = Link()
    worker = _worker(link)
    worker.receive(_invite(1), 1000.0)
    assert len(link.frames) == 2
    assert [len(unpack_frame(frame)) for frame in link.frames] == [1, 1]


def test_a_refused_frame_is_a_transport_error_for_its_client_transactions():
    framed = _worker(Link(up=False))
    _handle_batch(framed, [_invite(1)])
    # The same as when each message is refused on its own, outside a batch.
    single = _worker(Link(up=False))
    single.receive(_invite(1), 1000.0)
    assert framed.stats["drop_edge_link_down"] == single.stats["drop_edge_link_down"] >= 2
    assert framed.transactions.counters.transport_errors == single.transactions.counters.transport_errors
    assert framed.transactions.counters.transport_errors >= 1
    # The branch failed at once: the proxy gave up on it rather than waiting for Timer B.
    assert not framed.tu.contexts and not single.tu.contexts
    assert not framed.links._frames


def test_a_refused_frame_leaves_its_callee_reachable_once_the_link_is_back():
    # An edge restarting refuses what the worker sends through it; the
    # callee was never tried, so the next call to it goes (RFC 3263 §4.3
    # blocks a destination that did not answer, not our own link).
    link = Link(up=False)
    worker = _worker(link)
    _handle_batch(worker, [_invite(1)])
    assert worker.stats["drop_edge_link_down"] >= 2
    assert not len(worker.tu.blocklist)
    link.up = True
    _handle_batch(worker, [_invite(2)])
    (frame,) = link.frames
    starts = [env.data.split(b"\r\n", 1)[0] for env in unpack_frame(frame)]
    assert b"INVITE sip:bob@127.0.0.1:5070 SIP/2.0" in starts


def test_version_2_in_and_out_through_receive():
    link = Link()
    worker = _worker(link)
    raw = pack_v2(_invite(9))
    _handle_batch(worker, unpack_frame(raw))
    assert len(unpack_frame(link.frames[0])) == 2


class OneBatchInbox:
    """Hands the link loop one batch, then nothing more."""

    def __init__(self, batch: list[bytes]) -> None:
        self.batch = batch

    async def receive_batch(self, limit: int = 512) -> list[bytes]:
        if self.batch:
            batch, self.batch = self.batch, []
            return batch
        await trio.sleep_forever()


def test_a_long_batch_lets_other_tasks_run_within_it():
    from nodes.worker.link import YIELD_EVERY, LinkReader

    # Frames of many messages each: a batch far longer than YIELD_EVERY.
    # Trio runs each ready task once per scheduling batch in no fixed order,
    # so the other task may see each step's end rather than its start: with
    # four or more steps it still sees the batch unfinished at least once.
    frames = [pack_frame([pack_array(_invite(f * 100 + n)) for n in range(100)]) for f in range(12)]
    total = 1200
    assert total > 4 * YIELD_EVERY
    worker = _worker(Link())
    seen: list[int] = []
    handled = [0]
    receive = worker.receive

    def counting(env, now):
        handled[0] += 1
        receive(env, now)

    # The worker's link reader, reading a batch handed over in memory.
    reader = LinkReader(OneBatchInbox(frames), worker.links, worker.stats, receive=counting,
                        failed=worker._failed, done=worker._rest)

    async def main():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader.run)

            async def other_task():
                # Like the lease keeper: it must get a turn while the batch runs.
                while handled[0] < total:
                    seen.append(handled[0])
                    await trio.lowlevel.checkpoint()

            nursery.start_soon(other_task)
            with trio.fail_after(60):
                while handled[0] < total:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert handled[0] == total
    assert any(0 < n < total for n in seen), f"no other task ran mid-batch: {seen[:5]}"
