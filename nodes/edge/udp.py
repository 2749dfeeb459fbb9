"""UDP listener: one receive loop per socket, drained in batches.

An ``await`` per datagram caps a trio loop near 30k datagrams/s; waiting for
readability once and then draining with non-blocking ``recvfrom`` until the
kernel queue is empty (or a batch limit, to stay fair to other tasks) is
several times faster (STYLE §3).

A datagram from a banned source is dropped in the drain loop itself, one
dict lookup on the ban table, before the rest of the edge's per-message
path: a flood keeps arriving after its source is banned, and at 50,000
datagrams/s the cost of each one decides whether the edge still reads the
legitimate datagrams queued behind it before the kernel's receive buffer
overflows (ops/bench/flood.py).
"""

from __future__ import annotations

import socket
import time

import trio

from cluster.defence import DROP_BANNED
from cluster.link import FrameQueue
from cluster.sip.stun import binding_response

from .forwarder import Forwarder

_EMPTY = frozenset({b"\r\n", b"\r\n\r\n", b"\n", b""})
FRAME_EVERY = 32
"""Datagrams read before what they forward is sent, at most (latency bound)."""
RECEIVE_BUFFER = 16 << 20
"""Bytes asked for the socket's receive buffer (Linux doubles it for its
bookkeeping): about half a second of a 50,000 datagrams/s flood of small
datagrams, which costs memory only while they wait."""
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux socket(7); Python does not export it


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class UdpListener:
    transport = "UDP"

    def __init__(self, host: str, port: int, forwarder: Forwarder, *, batch: int = 256) -> None:
        self.forwarder = forwarder
        self.batch = batch
        self.sock = socket.socket(_family(host), socket.SOCK_DGRAM)
        try:
            # With CAP_NET_ADMIN, past net.core.rmem_max: the receive buffer
            # is the edge's slack while a flood's datagrams arrive faster
            # than it reads, e.g. while a loaded machine gives its core to
            # others (ops/bench/flood.py). Otherwise what rmem_max allows.
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
        except OSError:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            except OSError:  # pragma: no cover - limits vary by kernel
                pass
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        except OSError:  # pragma: no cover - limits vary by kernel
            pass
        self.sock.setblocking(False)
        self.sock.bind((host, port))
        bound = self.sock.getsockname()
        self.local: tuple[str, int] = (bound[0], bound[1])

    def send(self, data: bytes, peer: tuple[str, int]) -> bool:
        try:
            self.sock.sendto(data, peer)
            return True
        except (OSError, OverflowError, ValueError, TypeError):
            # OverflowError: a port past 65535; ValueError/TypeError: an
            # address the socket layer cannot take. A bad destination from a
            # worker costs that message, never the listener.
            self.forwarder.stats["drop_udp_send"] += 1
            return False

    def _stun(self, data: bytes, source: tuple[str, int]) -> bool:
        """Answer a STUN Binding request; False for anything else, which
        goes the way of any datagram (counted as garbage there)."""
        answer = binding_response(data, source)
        if answer is None:
            return False
        self.forwarder.stats["udp_stun_keepalive"] += 1
        self.send(answer, source)
        return True

    def _answer(self, answers: list[tuple[bytes, tuple[str, int]]]) -> None:
        for answer, peer in answers:
            self.send(answer, peer)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        sock = self.sock
        recvfrom = sock.recvfrom
        ingress = self.forwarder.ingress
        stats = self.forwarder.stats
        received = self.forwarder.received
        local = self.local
        guard = self.forwarder.guard
        ban_until = guard.bans.until if guard is not None else None
        clock = time.time
        task_status.started()
        flush = self.forwarder.flush
        # What one drain forwards to each worker leaves as one frame when the
        # worker reads them (Forwarder.ingress / flush).
        frames = FrameQueue()
        try:
            while True:
                await trio.lowlevel.wait_readable(sock)
                count = 0
                banned = 0
                drained = False
                now = clock()  # one reading per drain: a ban is at least seconds long
                for _ in range(self.batch):
                    try:
                        data, addr = recvfrom(65536)
                    except BlockingIOError:
                        drained = True
                        break
                    except OSError:
                        # ICMP errors surface here on Linux; nothing to read.
                        stats["udp_icmp_error"] += 1
                        continue
                    if ban_until is not None:
                        until = ban_until(addr[0])
                        if until is not None and now < until:
                            banned += 1
                            last_banned = (addr[0], data)
                            continue
                    if data in _EMPTY:
                        stats["udp_keepalive"] += 1
                        continue
                    if data[0] < 0x02 and self._stun(data, (addr[0], addr[1])):
                        # RFC 5626 §4.4.2: a STUN keep-alive on the flow,
                        # answered here (cluster.sip.stun).
                        continue
                    count += 1
                    try:
                        reply = ingress(data, "UDP", (addr[0], addr[1]), local, None, frames)
                    except Exception:  # noqa: BLE001
                        # A bug met by one datagram costs that datagram; the
                        # listener is every other message's way in.
                        self.forwarder.bug("ingress failed")
                        continue
                    if reply is not None:
                        self.send(reply, addr[:2])
                    if count % FRAME_EVERY == 0 and frames:
                        self._answer(flush(frames))
                if frames:
                    self._answer(flush(frames))
                received["UDP"] += count + banned
                if banned:
                    stats[DROP_BANNED] += banned
                    assert guard is not None  # ban_until comes from it
                    guard.dropped_banned(*last_banned, now)
                self.forwarder.drained(self.batch)
                if not drained:
                    # The batch limit, not an empty queue, ended the drain.
                    await trio.lowlevel.checkpoint()
        finally:
            sock.close()
