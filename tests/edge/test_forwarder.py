"""The edge's per-message path, with real ZeroMQ sockets on loopback."""

from __future__ import annotations

import time

import zmq

from cluster.link import FrameQueue, Inbox, Outbox, unpack, unpack_frame
from cluster.sharding.ring import Ring
from nodes.edge.forwarder import Forwarder, response_shard
from tests.sip.samples import OPTIONS, RESPONSE


def test_response_shard_reads_only_the_top_via():
    ours = RESPONSE.replace(b";received=192.0.2.1", b";received=192.0.2.1;wk=worker-2")
    assert response_shard(ours) == "worker-2"
    assert response_shard(RESPONSE) is None
    lower = RESPONSE.replace(b"Via: SIP/2.0/UDP pc33", b"Via: SIP/2.0/UDP top.example.com;branch=z9hG4bKx\r\nVia: SIP/2.0/UDP pc33").replace(
        b";received=192.0.2.1", b";received=192.0.2.1;wk=worker-9")
    assert response_shard(lower) is None


def _setup():
    ctx = zmq.Context()
    inboxes = {w: Inbox(ctx, "tcp://127.0.0.1:0") for w in ("w1", "w2")}
    outbox = Outbox(ctx)
    fwd = Forwarder("edge-t", outbox, max_message=4000, server="test")
    fwd.update(Ring(["w1"]), {w: i.endpoint for w, i in inboxes.items()})
    deadline = time.monotonic() + 30
    # One "warm" per inbox: a PUSH to a peer not yet connected refuses it
    # (IMMEDIATE), so only the refused ones are tried again.
    cold = set(inboxes)
    while cold:
        cold = {w for w in cold if not outbox.send(inboxes[w].endpoint, b"warm")}
        assert time.monotonic() < deadline
        if cold:
            time.sleep(0.01)
    for inbox in inboxes.values():
        while inbox.socket.poll(1000):
            if inbox.socket.recv() == b"warm":
                break
    return ctx, inboxes, outbox, fwd


def test_requests_go_to_the_ring_owner_and_responses_to_their_shard():
    ctx, inboxes, outbox, fwd = _setup()
    src, local = ("192.0.2.1", 5060), ("127.0.0.1", 5060)
    assert fwd.ingress(OPTIONS, "UDP", src, local, None) is None
    assert inboxes["w1"].socket.poll(5000)
    env = unpack(inboxes["w1"].socket.recv())
    assert env.data == OPTIONS and env.peer == src and env.kind == "in"
    # w2 is draining (not in the ring) but still holds the transaction.
    tagged = RESPONSE.replace(b";received=192.0.2.1", b";received=192.0.2.1;wk=w2")
    assert fwd.ingress(tagged, "UDP", src, local, None) is None
    assert inboxes["w2"].socket.poll(5000)
    assert unpack(inboxes["w2"].socket.recv()).data == tagged
    assert fwd.stats["forwarded"] == 2
    for i in inboxes.values():
        i.close()
    outbox.close()
    ctx.term()


def test_oversized_garbage_and_unreachable_are_answered_or_counted():
    ctx, inboxes, outbox, fwd = _setup()
    src, local = ("192.0.2.1", 5060), ("127.0.0.1", 5060)
    big = OPTIONS.replace(b"Accept: application/sdp", b"X-Pad: " + b"a" * 5000)
    answer = fwd.ingress(big, "UDP", src, local, None)
    assert answer.startswith(b"SIP/2.0 513 ")
    assert fwd.ingress(b"\x00garbage", "UDP", src, local, None) is None
    assert fwd.stats["drop_no_call_id"] == 1
    fwd.update(Ring(["w3"]), {"w3": "tcp://127.0.0.1:1"})
    answer = fwd.ingress(OPTIONS, "UDP", src, local, None)
    assert answer.startswith(b"SIP/2.0 503 ") and b"Retry-After: 2" in answer
    assert fwd.stats["unroutable_link_down"] == 1
    for i in inboxes.values():
        i.close()
    outbox.close()
    ctx.term()


def test_a_drain_forwards_one_frame_per_worker_that_reads_frames():
    ctx, inboxes, outbox, fwd = _setup()
    links = {w: i.endpoint for w, i in inboxes.items()}
    fwd.update(Ring(["w1"]), links, {links["w1"]})  # w1 reads frames, w2 only version 1
    src, local = ("192.0.2.1", 5060), ("127.0.0.1", 5060)
    frames = FrameQueue()
    tagged = RESPONSE.replace(b";received=192.0.2.1", b";received=192.0.2.1;wk=w2")
    for data in (OPTIONS, OPTIONS.replace(b"Call-ID: ", b"Call-ID: x"), tagged):
        assert fwd.ingress(data, "UDP", src, local, None, frames) is None
    # w2 does not read frames: its message went at once, as a version-1 map.
    assert inboxes["w2"].socket.poll(5000)
    assert unpack(inboxes["w2"].socket.recv()).data == tagged
    assert not inboxes["w1"].socket.poll(100), "queued until the drain ends"
    assert fwd.flush(frames) == [] and not frames
    assert inboxes["w1"].socket.poll(5000)
    sent = unpack_frame(inboxes["w1"].socket.recv())
    assert [env.data[:7] for env in sent] == [b"OPTIONS", b"OPTIONS"]
    assert fwd.stats["forwarded"] == 3 and fwd.stats["forwarded_frames"] == 1
    for i in inboxes.values():
        i.close()
    outbox.close()
    ctx.term()


class RefusingOutbox:
    def send(self, endpoint: str, data: bytes) -> bool:
        return False

    def connect(self, endpoint: str, server_key: bytes | None = None) -> None:
        return None

    def disconnect(self, endpoint: str) -> None:
        return None

    def endpoints(self) -> list[str]:
        return []


def test_a_refused_frame_answers_each_request_in_it():
    fwd = Forwarder("edge-t", RefusingOutbox(), max_message=4000, server="test")
    fwd.update(Ring(["w1"]), {"w1": "ipc:///nowhere"}, {"ipc:///nowhere"})
    src, local = ("192.0.2.1", 5060), ("127.0.0.1", 5060)
    frames = FrameQueue()
    fwd.ingress(OPTIONS, "UDP", src, local, None, frames)
    fwd.ingress(RESPONSE, "UDP", ("192.0.2.9", 5070), local, None, frames)
    answers = fwd.flush(frames)
    assert [(a[:12], peer) for a, peer in answers] == [(b"SIP/2.0 503 ", src)]  # a response is not answered
    assert fwd.stats["unroutable_link_down"] == 2
    assert fwd.stats["drop_unroutable"] == 1


def _owned_by(ring: Ring, worker: str) -> bytes:
    i = 0
    while ring.owner(f"reroute-{i}".encode()) != worker:
        i += 1
    return OPTIONS.replace(b"Call-ID: ", b"Call-ID: reroute-%d" % i + b"\r\nX-Old-Call-ID: ", 1)


def test_a_request_for_a_worker_whose_link_is_down_goes_to_the_next_owner():
    """Issue 18.1: not 503 "worker link unavailable" until the lease expires."""
    ctx, inboxes, outbox, fwd = _setup()
    src, local = ("192.0.2.1", 5060), ("127.0.0.1", 5060)
    ring = Ring(["w1", "w2"])
    fwd.update(ring, {"w1": inboxes["w1"].endpoint, "w2": inboxes["w2"].endpoint})
    request = _owned_by(ring, "w1")
    inboxes["w1"].close()
    deadline = time.monotonic() + 30
    # The link is refused once the peer's connection is gone (IMMEDIATE).
    while outbox.send(inboxes["w1"].endpoint, b"probe"):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert fwd.ingress(request, "UDP", src, local, None) is None
    assert inboxes["w2"].socket.poll(5000)
    env = unpack(inboxes["w2"].socket.recv())
    assert env.data == request and env.epoch == ring.epoch and env.current
    assert fwd.stats["link_suspect"] == 1 and fwd.stats["rerouted_link_down"] == 1
    assert fwd.router.suspects.keys() == {"w1"}
    # The next one goes straight to w2, pinned there even once w1 is back.
    assert fwd.ingress(request, "UDP", src, local, None) is None
    assert inboxes["w2"].socket.poll(5000)
    fwd.link_up(inboxes["w1"].endpoint)
    assert fwd.router.suspects == {} and fwd.stats["link_restored"] == 1
    assert fwd.router.owner(request.split(b"Call-ID: ")[1].split(b"\r\n")[0], time.monotonic()) == "w2"
    inboxes["w2"].close()
    outbox.close()
    ctx.term()


def test_a_full_queue_on_a_live_link_is_answered_not_rerouted():
    """A link that is up (its monitor saw the handshake) and refuses a
    message has a full queue: the worker is alive and busy, so the request
    is answered 503 rather than moved to another shard (the worker keeps
    its Call-IDs); a link that is not up is routed around."""
    ring = Ring(["w1", "w2"])
    links = {"w1": "ipc:///w1", "w2": "ipc:///w2"}
    request = _owned_by(ring, "w1")
    src, local = ("192.0.2.1", 5060), ("127.0.0.1", 5060)
    for framed in (False, True):
        fwd = Forwarder("edge-t", RefusingOutbox(), max_message=4000, server="test")
        fwd.update(ring, links, set(links.values()))
        fwd.link_up("ipc:///w1")
        fwd.link_up("ipc:///w2")
        if framed:
            frames = FrameQueue()
            assert fwd.ingress(request, "UDP", src, local, None, frames) is None
            (answer, _), = fwd.flush(frames)
        else:
            answer = fwd.ingress(request, "UDP", src, local, None)
        assert answer.startswith(b"SIP/2.0 503 "), answer
        assert fwd.router.suspects == {} and fwd.stats["rerouted_link_down"] == 0
        # Down: suspect, and its Call-IDs go to the next owner (whose
        # queue is full here too).
        fwd.link_down("ipc:///w1")
        assert fwd.ingress(request, "UDP", src, local, None).startswith(b"SIP/2.0 503 ")
        assert "w1" in fwd.router.suspects and fwd.router.rerouted == 1
