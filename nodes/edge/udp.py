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

With the compiled module (cluster.speedups, nodes/edge/fastpath.py) an IPv4
socket is drained by ``recvmmsg`` in C, FRAME_EVERY datagrams a call: what C
can route exactly as ``Forwarder.ingress`` would goes into the workers'
frames with no Python object made for it, anything else comes back to
``_datagram`` in its turn, and ``_run_python`` stays the reference. The C
path stamps the datagrams of one ``recvmmsg`` with one clock reading.
Replies leave through ``queue``/``flush_out``: ``sendmmsg`` for a batch.
"""

from __future__ import annotations

import socket
import time

import trio

from cluster import speedups
from cluster.defence import DROP_BANNED
from cluster.link import FrameQueue
from cluster.sip.stun import binding_response

from .fastpath import CompiledPath
from .forwarder import Forwarder

_EMPTY = frozenset({b"\r\n", b"\r\n\r\n", b"\n", b""})
FRAME_EVERY = 32
"""Datagrams read before what they forward is sent, at most (latency bound)."""
RECEIVE_BUFFER = 16 << 20
"""Bytes asked for the socket's receive buffer (Linux doubles it for its
bookkeeping): about half a second of a 50,000 datagrams/s flood of small
datagrams, which costs memory only while they wait."""
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux socket(7); Python does not export it


class _Tally:
    """What one drain read, for the counters and the ban report."""

    __slots__ = ("now", "count", "banned", "last_banned")

    def __init__(self, now: float) -> None:
        self.now = now
        self.count = 0
        """Datagrams that reached the forwarder (not banned, keep-alives or STUN)."""
        self.banned = 0
        self.last_banned: tuple[str, bytes] | None = None


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class UdpListener:
    transport = "UDP"

    def __init__(self, host: str, port: int, forwarder: Forwarder, *, batch: int = 256,
                 compiled: bool = True) -> None:
        self.forwarder = forwarder
        self.batch = batch
        guard = forwarder.guard
        self._ban_until = guard.bans.until if guard is not None else None
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
        self._outgoing: list[tuple[bytes, tuple[str, int]]] = []
        self.compiled: CompiledPath | None = None
        """The C drain (cluster.speedups), when built and asked for; it reads
        IPv4 sockets (an IPv6 peer's address text is left to Python's own)."""
        if compiled and speedups.edge is not None and self.sock.family == socket.AF_INET:
            self.compiled = CompiledPath(speedups.edge, self.sock.fileno(), forwarder, self.local,
                                         slots=FRAME_EVERY)

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

    def queue(self, data: bytes, peer: tuple[str, int]) -> None:
        """Send ``data`` at the next ``flush_out`` (the edge's link loop
        queues what one frame from a worker holds, then flushes)."""
        self._outgoing.append((data, peer))

    def flush_out(self) -> int:
        """Send what ``queue`` holds; the number sent. With the compiled
        module, one sendmmsg per 64 datagrams instead of a sendto each."""
        outgoing, self._outgoing = self._outgoing, []
        if self.compiled is None or len(outgoing) < 2:
            return sum(self.send(data, peer) for data, peer in outgoing)
        assert speedups.edge is not None  # self.compiled is built from it
        send_many = speedups.edge.send_many
        fd = self.sock.fileno()
        sent = at = 0
        while at < len(outgoing):
            done, failed, at = send_many(fd, outgoing, at)
            sent += done
            if failed:
                self.forwarder.stats["drop_udp_send"] += failed
            if at < len(outgoing):
                # Not an IPv4 literal and port: the socket layer's own way.
                sent += self.send(*outgoing[at])
                at += 1
        return sent

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
        self._outgoing += answers
        self.flush_out()

    def _datagram(self, data: bytes, addr: tuple[str, int], tally: _Tally, frames: FrameQueue) -> bool:
        """One datagram of a drain; True when it reached ``Forwarder.ingress``."""
        ban_until = self._ban_until
        if ban_until is not None:
            until = ban_until(addr[0])
            if until is not None and tally.now < until:
                tally.banned += 1
                tally.last_banned = (addr[0], data)
                return False
        if data in _EMPTY:
            self.forwarder.stats["udp_keepalive"] += 1
            return False
        if data[0] < 0x02 and self._stun(data, addr):
            # RFC 5626 §4.4.2: a STUN keep-alive on the flow,
            # answered here (cluster.sip.stun).
            return False
        tally.count += 1
        try:
            reply = self.forwarder.ingress(data, "UDP", addr, self.local, None, frames)
        except Exception:  # noqa: BLE001
            # A bug met by one datagram costs that datagram; the
            # listener is every other message's way in.
            self.forwarder.bug("ingress failed")
            return True
        if reply is not None:
            self.send(reply, addr)
        return True

    def _drained(self, tally: _Tally, emptied: bool) -> bool:
        """Account for a drain; True when the batch limit, not an empty
        queue, ended it (the loop then yields before reading on)."""
        forwarder = self.forwarder
        forwarder.received["UDP"] += tally.count + tally.banned
        if tally.banned:
            forwarder.stats[DROP_BANNED] += tally.banned
            assert forwarder.guard is not None and tally.last_banned is not None  # _ban_until comes from it
            forwarder.guard.dropped_banned(*tally.last_banned, tally.now)
        forwarder.drained(self.batch)
        return not emptied

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            if self.compiled is not None:
                await self._run_compiled(self.compiled, task_status)
            else:
                await self._run_python(task_status)
        finally:
            self.sock.close()

    async def _run_python(self, task_status) -> None:
        """The reference loop: one ``recvfrom`` and one ``_datagram`` per datagram."""
        sock = self.sock
        recvfrom = sock.recvfrom
        stats = self.forwarder.stats
        flush = self.forwarder.flush
        one = self._datagram
        clock = time.time
        task_status.started()
        # What one drain forwards to each worker leaves as one frame when the
        # worker reads them (Forwarder.ingress / flush).
        frames = FrameQueue()
        while True:
            await trio.lowlevel.wait_readable(sock)
            # One clock reading per drain: a ban is at least seconds long.
            tally = _Tally(clock())
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
                if one(data, (addr[0], addr[1]), tally, frames) and tally.count % FRAME_EVERY == 0 and frames:
                    self._answer(flush(frames))
            if frames:
                self._answer(flush(frames))
            if self._drained(tally, drained):
                await trio.lowlevel.checkpoint()

    async def _run_compiled(self, path: CompiledPath, task_status) -> None:
        """The same drain with ``recvmmsg`` in C (nodes/edge/fastpath.py):
        FRAME_EVERY datagrams at a time, each routed in C or, when it cannot
        be, handed to ``_datagram`` in its turn."""
        sock = self.sock
        forwarder = self.forwarder
        stats = forwarder.stats
        flush = forwarder.flush
        drain = path.drain.drain
        frames = path.frames
        one = self._datagram
        clock = time.time
        task_status.started()
        while True:
            await trio.lowlevel.wait_readable(sock)
            tally = _Tally(clock())

            def fallback(data: bytes, host: str, port: int, tally: _Tally = tally) -> None:
                one(data, (host, port), tally, frames)

            read = 0
            emptied = False
            while read < self.batch and not emptied:
                seen, forwarded, keepalives, emptied, errors = drain(
                    min(FRAME_EVERY, self.batch - read), path.prepare(), fallback)
                read += seen
                tally.count += forwarded
                forwarder.admitted += forwarded
                if forwarded:
                    # In the edge's status counters: the C path is in use.
                    stats["udp_compiled"] += forwarded
                if keepalives:
                    stats["udp_keepalive"] += keepalives
                if errors:
                    stats["udp_icmp_error"] += errors
                if frames:
                    self._answer(flush(frames))
            if self._drained(tally, emptied):
                await trio.lowlevel.checkpoint()
