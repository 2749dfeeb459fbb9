"""TCP listener and connection table (RFC 3261 §18.2.2, RFC 5626 §3.5.1).

Each connection has a reader (framing with ``StreamFramer``) and a writer fed
by a bounded channel, so writes from the link loop never wait. Responses go
back on the connection the request arrived on while it is open; when it is
gone, or for a request to a new destination, the edge opens a connection
(§18.2.2) and keeps it in the table for reuse.

Against slow or greedy peers (slowloris): a message must be complete
within ``message_timeout`` seconds of its first byte — bytes trickled in
keep a connection from being idle but not from this deadline — and one
source address holds at most ``per_source`` connections. Both are counted
drops (the connection is closed or refused).
"""

from __future__ import annotations

import itertools
import math

import trio

from cluster.sip import KEEPALIVE, PONG, ParseError, StreamFramer, reject_malformed

from .forwarder import Forwarder
import trio.lowlevel


class Connection:
    __slots__ = ("id", "stream", "peer", "local", "outgoing", "incoming", "last_activity")

    def __init__(self, conn_id: int, stream: trio.abc.Stream, queue: int) -> None:
        self.id = conn_id
        self.stream = stream
        # TLS and WebSocket connections are streams over a SocketStream.
        sock = socket_of(stream)
        peer = sock.getpeername()
        local = sock.getsockname()
        self.peer = (peer[0], peer[1])
        self.local = (local[0], local[1])
        self.outgoing, self.incoming = trio.open_memory_channel[bytes](queue)
        self.last_activity = trio.current_time()


def socket_of(stream: trio.abc.Stream) -> trio.socket.SocketType:
    """The socket under a stream wrapped in ``trio.SSLStream``s."""
    while not isinstance(stream, trio.SocketStream):
        stream = stream.transport_stream  # type: ignore[attr-defined]
    return stream.socket


CLOSE_TIMEOUT = 2.0
"""Seconds a connection's orderly close (a TLS close_notify) may take; a peer
that reads nothing must not hold the closing task for ever."""


class TcpTransport:
    transport = "TCP"
    prefix = "tcp"
    """Names this transport's counters (``tls_refused_max_connections``, ``drop_wss_per_source``...)."""

    def __init__(
        self,
        forwarder: Forwarder,
        *,
        idle_timeout: float,
        max_connections: int,
        message_timeout: float = 10.0,
        per_source: int = 64,
        queue: int = 1000,
    ) -> None:
        self.forwarder = forwarder
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.message_timeout = message_timeout
        self.per_source = per_source
        self.sources: dict[str, int] = {}
        """Open connections by peer address (``per_source``)."""
        self.queue = queue
        self.connections: dict[int, Connection] = {}
        self.by_peer: dict[tuple[str, int], int] = {}
        self._ids = itertools.count(1)
        self._nursery: trio.Nursery | None = None
        self.locals: list[tuple[str, int]] = []

    async def run(self, listen: list[tuple[str, int]], *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = []
        for host, port in listen:
            listeners.extend(await trio.open_tcp_listeners(port, host=host))
        for listener in listeners:
            name = listener.socket.getsockname()
            self.locals.append((name[0], name[1]))
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(trio.serve_listeners, self._serve, listeners)
            task_status.started()

    async def _serve(self, stream: trio.abc.Stream) -> None:
        if len(self.connections) >= self.max_connections:
            self.forwarder.stats[f"{self.prefix}_refused_max_connections"] += 1
            await stream.aclose()
            return
        try:
            host = socket_of(stream).getpeername()[0]
        except OSError:
            await stream.aclose()
            return
        if self.sources.get(host, 0) >= self.per_source:
            self.forwarder.stats[f"drop_{self.prefix}_per_source"] += 1
            await stream.aclose()
            return
        await self._handle(stream)

    async def _handle(self, stream: trio.abc.Stream, first: bytes | None = None) -> None:
        conn = Connection(next(self._ids), stream, self.queue)
        self.connections[conn.id] = conn
        self.by_peer[conn.peer] = conn.id
        sources = self.sources
        sources[conn.peer[0]] = sources.get(conn.peer[0], 0) + 1
        if first is not None:
            conn.outgoing.send_nowait(first)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer, conn, nursery.cancel_scope)
                await self._reader(conn)
                nursery.cancel_scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        except Exception:  # noqa: BLE001
            # A bug met on one connection closes that connection; raised
            # further it would stop the listener and the edge with it.
            self.forwarder.bug("tcp connection failed")
        finally:
            self.connections.pop(conn.id, None)
            left = sources[conn.peer[0]] - 1
            if left:
                sources[conn.peer[0]] = left
            else:
                del sources[conn.peer[0]]
            if self.by_peer.get(conn.peer) == conn.id:
                del self.by_peer[conn.peer]
            with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
                await stream.aclose()

    async def _reader(self, conn: Connection) -> None:
        framer = StreamFramer(self.forwarder.max_message)
        ingress = self.forwarder.ingress
        stats = self.forwarder.stats
        received = self.forwarder.received
        transport = self.transport
        started = math.inf
        """When the first byte of the message still incomplete arrived."""
        while True:
            with trio.move_on_at(min(trio.current_time() + self.idle_timeout,
                                     started + self.message_timeout)) as scope:
                try:
                    data = await conn.stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    return  # reset by the peer: as _writer, not a bug
            if scope.cancelled_caught:
                now = trio.current_time()
                if now - started >= self.message_timeout:
                    stats[f"drop_{self.prefix}_slow_message"] += 1
                    return
                if now - conn.last_activity >= self.idle_timeout:
                    stats[f"{self.prefix}_idle_closed"] += 1
                    return
                continue
            if not data:
                return
            conn.last_activity = trio.current_time()
            try:
                messages = framer.feed(bytes(data))  # bytes already: no copy
            except ParseError as error:
                # The stream cannot be framed any more: answer if we can, then
                # close (RFC 4475 §3.1.2.3 ncl, §3.3.2 mcl01).
                stats[f"{self.prefix}_framing_error"] += 1
                answer = reject_malformed(bytes(data), error, server=self.forwarder.server)
                if answer is not None:
                    self._queue(conn, answer)
                await trio.lowlevel.checkpoint()
                return
            if not framer.buffered:
                started = math.inf
            elif messages or started == math.inf:
                started = conn.last_activity
            for message in messages:
                if message is KEEPALIVE:
                    stats["tcp_keepalive"] += 1
                    self._queue(conn, PONG)
                    continue
                received[transport] += 1
                reply = ingress(message, transport, conn.peer, conn.local, conn.id)
                if reply is not None:
                    self._queue(conn, reply)

    async def _writer(self, conn: Connection, scope: trio.CancelScope) -> None:
        async for data in conn.incoming:
            try:
                await conn.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                # The peer went away (reset, broken pipe): the connection
                # ends here. Raised, it would reach _handle inside the
                # nursery's exception group and count as a bug (found by
                # tests/e2e/test_wire_fuzz.py).
                scope.cancel()
                return
            conn.last_activity = trio.current_time()

    def _queue(self, conn: Connection, data: bytes) -> bool:
        try:
            conn.outgoing.send_nowait(data)
            return True
        except trio.WouldBlock:
            self.forwarder.stats["drop_tcp_queue_full"] += 1
            return False

    def send(self, data: bytes, peer: tuple[str, int], conn_id: int | None, *, flow: bool = False) -> bool:
        """Write on ``conn_id`` if open, else on any connection to ``peer``,
        else open a new connection to ``peer`` (§18.2.2). ``flow``: a strict
        RFC 5626 flow, written on ``conn_id`` or not at all (False)."""
        conn = self.connections.get(conn_id) if conn_id is not None else None
        if flow:
            return conn is not None and conn.peer == peer and self._queue(conn, data)
        if conn is None:
            existing = self.by_peer.get(peer)
            conn = self.connections.get(existing) if existing is not None else None
        if conn is not None:
            return self._queue(conn, data)
        if self._nursery is None or len(self.connections) >= self.max_connections:
            self.forwarder.stats["drop_tcp_no_connection"] += 1
            return False
        self._nursery.start_soon(self._connect, peer, data)
        return True

    async def _connect(self, peer: tuple[str, int], data: bytes) -> None:
        try:
            with trio.fail_after(5):
                stream = await trio.open_tcp_stream(peer[0], peer[1])
        except (OSError, trio.TooSlowError):
            self.forwarder.stats["tcp_connect_failed"] += 1
            return
        await self._handle(stream, first=data)
