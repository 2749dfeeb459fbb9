"""SIP over WebSocket and secure WebSocket at the edge (RFC 7118).

The I/O around ``cluster.sip.websocket.SipWebSocket``: the connection table,
writer and bounded write queue are the stream transports' (``StreamGuard``),
WSS puts the TLS handshake of ``nodes/edge/tls.py`` in front. A browser is
never connected to: a message for a WebSocket client goes on the
connection it opened (RFC 7118 §5: the client is behind it, its Via host is
an ``.invalid`` name), or is dropped and counted once that is gone.
"""

from __future__ import annotations

import trio

from cluster.sip.websocket import SipWebSocket

from .forwarder import Forwarder
from .tcp import Connection
from .tls import StreamGuard, TlsContexts


class WsTransport(StreamGuard):
    """WS, or WSS with ``contexts``."""

    def __init__(self, forwarder: Forwarder, *, contexts: TlsContexts | None, origins: tuple[str, ...],
                 ping_interval: float, idle_timeout: float, max_connections: int,
                 handshake_timeout: float, message_timeout: float = 10.0, per_source: int = 64,
                 queue: int = 1000) -> None:
        super().__init__(forwarder, contexts=contexts, idle_timeout=idle_timeout,
                         max_connections=max_connections, handshake_timeout=handshake_timeout,
                         message_timeout=message_timeout, per_source=per_source, queue=queue)
        self.transport = "WSS" if contexts is not None else "WS"
        self.prefix = self.transport.lower()
        self.origins = frozenset(origin.lower().rstrip("/") for origin in origins)
        self.ping_interval = ping_interval
        self.sockets: dict[int, SipWebSocket] = {}

    async def _reader(self, conn: Connection) -> None:
        ws = self.sockets[conn.id] = SipWebSocket(
            max_message=self.forwarder.max_message, origins=self.origins, ping_interval=self.ping_interval,
            handshake_timeout=self.handshake_timeout, now=trio.current_time(),
            message_timeout=self.message_timeout)
        forwarder = self.forwarder
        stats = forwarder.stats
        transport = self.transport
        try:
            while True:
                data: bytes | None = None
                with trio.move_on_at(ws.deadline()):
                    try:
                        data = bytes(await conn.stream.receive_some(65536))
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        return  # reset by the peer: not a bug (as TCP's reader)
                now = trio.current_time()
                out = ws.handle_timer(now) if data is None else ws.receive(data, now)
                for event in out.events:
                    stats[event] += 1
                for message in out.messages:
                    forwarder.received[transport] += 1
                    reply = forwarder.ingress(message, transport, conn.peer, conn.local, conn.id)
                    if reply is not None:
                        self._queue(conn, ws.send_message(reply))
                if out.close or data == b"":
                    await self.finish(conn, out.data)
                    return
                if out.data:
                    self._queue(conn, out.data)
        finally:
            del self.sockets[conn.id]

    def send(self, data: bytes, peer: tuple[str, int], conn_id: int | None, *, flow: bool = False) -> bool:
        """Frame and queue on ``conn_id`` (or the peer's connection, unless
        ``flow``: a strict RFC 5626 flow is that connection or none)."""
        conn = self.connections.get(conn_id) if conn_id is not None else None
        if flow and conn is not None and conn.peer != peer:
            conn = None
        if conn is None and not flow:
            existing = self.by_peer.get(peer)
            conn = self.connections.get(existing) if existing is not None else None
        ws = self.sockets.get(conn.id) if conn is not None else None
        frame = ws.send_message(data) if ws is not None else b""
        if conn is None or not frame:
            self.forwarder.stats[f"drop_{self.prefix}_no_connection"] += 1
            return False
        return self._queue(conn, frame)

