"""UDP listener: one receive loop per socket, drained in batches.

An ``await`` per datagram caps a trio loop near 30k datagrams/s; waiting for
readability once and then draining with non-blocking ``recvfrom`` until the
kernel queue is empty (or a batch limit, to stay fair to other tasks) is
several times faster (STYLE §3).
"""

from __future__ import annotations

import socket

import trio

from cluster.link import FrameQueue
from cluster.sip.stun import binding_response

from .forwarder import Forwarder

_EMPTY = frozenset({b"\r\n", b"\r\n\r\n", b"\n", b""})
FRAME_EVERY = 32
"""Datagrams read before what they forward is sent, at most (latency bound)."""


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class UdpListener:
    transport = "UDP"

    def __init__(self, host: str, port: int, forwarder: Forwarder, *, batch: int = 256) -> None:
        self.forwarder = forwarder
        self.batch = batch
        self.sock = socket.socket(_family(host), socket.SOCK_DGRAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
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
        task_status.started()
        flush = self.forwarder.flush
        # What one drain forwards to each worker leaves as one frame when the
        # worker reads them (Forwarder.ingress / flush).
        frames = FrameQueue()
        try:
            while True:
                await trio.lowlevel.wait_readable(sock)
                count = 0
                drained = False
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
                received["UDP"] += count
                self.forwarder.drained(self.batch)
                if not drained:
                    # The batch limit, not an empty queue, ended the drain.
                    await trio.lowlevel.checkpoint()
        finally:
            sock.close()
