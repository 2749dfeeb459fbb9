"""The UDP listener's two loops over a real socket and real worker links:
the same datagrams give the workers the same envelopes (but for the time
each was stamped and the listener's own port) and their senders the same
answers, whether the C drain (recvmmsg) or the Python loop reads them."""

from __future__ import annotations

import os
import socket
import struct
import time

import trio
import zmq

from cluster import speedups
from cluster.link import Inbox, Outbox, unpack_frame
from cluster.sharding.ring import Ring
from cluster.sip.stun import MAGIC_COOKIE
from nodes.edge.forwarder import Forwarder
from nodes.edge.udp import UdpListener
from tests.sip.samples import INVITE, OPTIONS, RESPONSE

WORKERS = ("w1", "w2")
STUN = struct.pack("!HHI", 0x0001, 0, MAGIC_COOKIE) + os.urandom(12)


def datagrams() -> list[bytes]:
    out = []
    for n in range(300):
        data = (INVITE, OPTIONS, RESPONSE)[n % 3].replace(b"a84b4c76e66710", b"listen-%d" % n)
        if n % 11 == 0:
            data = data.replace(b"Call-ID: ", b"Call-ID:\r\n ")  # folded: Python's
        out.append(data)
        if n % 50 == 0:
            out += [b"\r\n\r\n", STUN, OPTIONS + b"x" * 5000, b"garbage"]
    return out


def run(compiled: bool, messages: list[bytes]) -> tuple[list[list], list[bytes], dict]:
    ctx = zmq.Context()
    try:
        inboxes = {w: Inbox(ctx, "tcp://127.0.0.1:0") for w in WORKERS}
        outbox = Outbox(ctx)
        forwarder = Forwarder("edge-1", outbox, max_message=4000, server="test")
        links = {w: inbox.endpoint for w, inbox in inboxes.items()}
        forwarder.update(Ring(WORKERS, epoch=3), links, set(links.values()))
        forwarder.advertise = {"UDP": "198.51.100.1:5060"}
        deadline = time.monotonic() + 60
        cold = set(links.values())
        while cold:  # a PUSH refuses until its peer is connected (IMMEDIATE)
            cold = {e for e in cold if not outbox.send(e, b"warm")}
            assert time.monotonic() < deadline
            time.sleep(0.01)
        listener = UdpListener("127.0.0.1", 0, forwarder, compiled=compiled)
        assert (listener.compiled is not None) == compiled
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.bind(("127.0.0.1", 0))
        client.setblocking(False)
        envelopes: dict[str, list] = {w: [] for w in WORKERS}
        answers: list[bytes] = []
        expected = sum(1 for m in messages if m not in (b"\r\n\r\n", b"garbage", STUN) and len(m) <= 4000)

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                await nursery.start(listener.run)
                for message in messages:
                    client.sendto(message, listener.local)
                    await trio.lowlevel.checkpoint()  # the listener reads as they come
                end = trio.current_time() + 60
                while sum(map(len, envelopes.values())) < expected or len(answers) < 6 * 2:
                    assert trio.current_time() < end, (sum(map(len, envelopes.values())), len(answers))
                    for worker, inbox in inboxes.items():
                        while inbox.socket.poll(0):
                            raw = inbox.socket.recv()
                            if raw != b"warm":
                                envelopes[worker] += unpack_frame(raw)
                    try:
                        while True:
                            answers.append(client.recv(65536))
                    except BlockingIOError:
                        pass
                    await trio.sleep(0.01)
                nursery.cancel_scope.cancel()

        trio.run(main)
        client.close()
        normal = [[env._replace(ts_ns=0, local=("", 0), peer=(env.peer[0], 0)) for env in envelopes[w]] for w in WORKERS]
        return normal, answers, dict(forwarder.stats)
    finally:
        ctx.destroy(linger=0)


def test_the_c_drain_and_the_python_loop_forward_and_answer_alike():
    assert speedups.edge is not None or speedups.PURE_PYTHON
    messages = datagrams()
    python = run(False, messages)
    if speedups.edge is None:
        return  # the pure-Python run: the reference loop alone (run above)
    compiled = run(True, messages)
    assert compiled[0] == python[0]
    assert all(python[0])  # both workers got some
    # STUN answers name the client's port: compare their kinds.
    assert sorted(a[:2] if a[:1] < b"\x02" else a.split(b"\r\n")[0] for a in compiled[1]) == \
        sorted(a[:2] if a[:1] < b"\x02" else a.split(b"\r\n")[0] for a in python[1])
    for key in ("forwarded", "udp_keepalive", "udp_stun_keepalive", "drop_oversize", "drop_no_call_id"):
        assert compiled[2].get(key) == python[2].get(key), key
    # Most went the C way; the folded Call-IDs, STUN, 513s and garbage did not.
    assert 250 <= compiled[2]["udp_compiled"] < 300 and "udp_compiled" not in python[2]


def send_all(compiled: bool) -> tuple[list[list[bytes]], int, int]:
    forwarder = Forwarder("edge-1", None, max_message=4000, server="test")
    listener = UdpListener("127.0.0.1", 0, forwarder, compiled=compiled)
    assert (listener.compiled is not None) == compiled
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    try:
        for client in clients:
            client.bind(("127.0.0.1", 0))
        peers = [client.getsockname() for client in clients]
        for n in range(150):
            listener.queue(b"response %d" % n, peers[n % 2])
            if n % 40 == 0:  # a name, an impossible port, port 0, an IPv6 peer
                odd = (("localhost", peers[0][1]), ("127.0.0.1", 70000), ("127.0.0.1", 0), ("::1", 5060))
                for i, bad in enumerate(odd):
                    listener.queue(b"odd %d %d" % (n, i), bad)
        sent = listener.flush_out()
        got: list[list[bytes]] = [[], []]
        for client, out in zip(clients, got):
            client.settimeout(10)
            while len(out) < 75 + (4 if client is clients[0] else 0):
                out.append(client.recv(100))
        return got, sent, forwarder.stats["drop_udp_send"]
    finally:
        listener.sock.close()
        for client in clients:
            client.close()


def test_the_response_path_sends_in_batches_what_one_by_one_sends():
    """UdpListener.flush_out: sendmmsg with the compiled module, a sendto
    per datagram without; the same datagrams arrive in the same order and
    the same refusals are counted (a port past 65535, port 0, an IPv6
    peer on an IPv4 socket)."""
    python = send_all(False)
    assert python[1] == 150 + 4 and python[2] == 3 * 4
    if speedups.edge is not None:
        assert send_all(True) == python
