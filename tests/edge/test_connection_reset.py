"""A client that resets its TCP connection is a lost connection, not an
edge bug: no traceback, no internal_error (the reset surfaces inside the
connection's nursery, wrapped in an exception group)."""

from __future__ import annotations

import socket
import struct

import trio

from nodes.edge.tcp import TcpTransport
from tests.support.streams import forwarder, options, serving, wait_until


def test_a_reset_connection_is_not_counted_as_a_bug():
    transport = TcpTransport(forwarder(), idle_timeout=30, max_connections=10)
    trio.run(_reset_one, transport)
    assert transport.forwarder.stats["internal_error"] == 0


async def _reset_one(transport: TcpTransport) -> None:
    async with serving(transport) as port:
        def reset() -> None:
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(options("TCP"))
            sock.recv(4096)  # the forwarder's 503: the connection is in use
            # SO_LINGER 0: close() sends RST.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        await trio.to_thread.run_sync(reset)
        await wait_until(lambda: not transport.connections)
