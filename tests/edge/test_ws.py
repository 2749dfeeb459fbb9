"""SIP over WS and WSS at the edge (issue 20.2 and its bad input): the
transport in-process with a real forwarder (no ring: each request is answered
503 on its connection), a wsproto client over a real socket."""

from __future__ import annotations

import select
import socket
import ssl

import pytest
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection, BytesMessage, CloseConnection, Ping, RejectConnection, Request, TextMessage,
)

from nodes.edge.tls import TlsContexts
from nodes.edge.ws import WsTransport
from tests.support.pki import make_pki
from tests.support.streams import edge_config, forwarder, options, serving, wait_until


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def transport(pki, secure: bool, *, ping: float = 30.0, origins=(), handshake_timeout: float = 10.0,
              message_timeout: float = 10.0):
    fw = forwarder()
    contexts = TlsContexts(edge_config(pki, listen=["wss:127.0.0.1:8443"]), fw.stats) if secure else None
    return WsTransport(fw, contexts=contexts, origins=origins, ping_interval=ping, idle_timeout=60,
                       max_connections=100, handshake_timeout=handshake_timeout,
                       message_timeout=message_timeout)


class Client:
    """A blocking WebSocket client: wsproto over a socket (TLS for WSS)."""

    def __init__(self, port: int, ca=None, *, subprotocols=("sip",), headers=()) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=20)
        if ca is not None:
            raw = ssl.create_default_context(cafile=str(ca)).wrap_socket(raw, server_hostname="localhost")
        self.sock = raw
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.sock.sendall(self.ws.send(Request(host="localhost", target="/", subprotocols=list(subprotocols),
                                               extra_headers=list(headers))))
        self.pending: list = []

    def event(self):
        while not self.pending:
            data = self.sock.recv(65536)
            self.ws.receive_data(data or None)
            self.pending.extend(self.ws.events())
            if not data and not self.pending:
                return None
        return self.pending.pop(0)

    def send(self, event) -> None:
        self.sock.sendall(self.ws.send(event))

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("secure", [False, True], ids=["ws", "wss"])
def test_sip_over_websocket_one_message_per_frame(pki, secure):
    ws = transport(pki, secure)
    name = "WSS" if secure else "WS"

    async def main():
        async with serving(ws) as port:
            def client():
                c = Client(port, pki.ca if secure else None)
                try:
                    accept = c.event()
                    assert isinstance(accept, AcceptConnection) and accept.subprotocol == "sip"
                    c.send(TextMessage(options(name, "over-ws").decode()))
                    reply = c.event()
                    c.send(Ping(b"x"))
                    return reply, c.event()
                finally:
                    c.close()
            reply, pong = await trio.to_thread.run_sync(client)
            assert isinstance(reply, TextMessage) and reply.data.startswith("SIP/2.0 503")
            assert "Call-ID: over-ws" in reply.data
            assert type(pong).__name__ == "Pong"
    trio.run(main)
    assert ws.forwarder.received[name] == 1


def test_a_message_from_a_worker_goes_on_the_clients_connection(pki):
    ws = transport(pki, False)

    async def main():
        async with serving(ws) as port:
            c = await trio.to_thread.run_sync(lambda: Client(port))
            try:
                assert isinstance(await trio.to_thread.run_sync(c.event), AcceptConnection)
                await wait_until(lambda: len(ws.connections) == 1)
                (conn,) = ws.connections.values()
                assert ws.send(b"OPTIONS sip:ua@df7jal23ls0d.invalid;transport=ws SIP/2.0\r\n\r\n", conn.peer, conn.id)
                event = await trio.to_thread.run_sync(c.event)
                assert isinstance(event, TextMessage) and event.data.startswith("OPTIONS sip:ua@")
            finally:
                c.close()
            await wait_until(lambda: not ws.connections)
            # Gone: never connected to (a browser cannot be reached otherwise).
            assert not ws.send(b"OPTIONS sip:ua@x SIP/2.0\r\n\r\n", conn.peer, conn.id)
    trio.run(main)
    assert ws.forwarder.stats["drop_ws_no_connection"] == 1


def test_refused_upgrades_malformed_http_and_origin(pki):
    ws = transport(pki, False, origins=("https://app.example.test",))

    async def main():
        async with serving(ws) as port:
            def raw_http(data: bytes) -> bytes:
                with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
                    sock.sendall(data)
                    out = b""
                    while chunk := sock.recv(4096):
                        out += chunk
                    return out
            bad = await trio.to_thread.run_sync(raw_http, b"GET /sip HTTP/1.1\r\nHost: edge\r\n\r\n")
            assert bad.startswith(b"HTTP/1.1 400 "), (bad, ws.forwarder.stats)

            def foreign():
                c = Client(port, headers=[(b"Origin", b"https://evil.example.test")])
                try:
                    return c.event()
                finally:
                    c.close()
            refused = await trio.to_thread.run_sync(foreign)
            assert isinstance(refused, RejectConnection) and refused.status_code == 403
            await wait_until(lambda: not ws.connections)
    trio.run(main)
    assert ws.forwarder.stats["ws_bad_upgrade"] == 1
    assert ws.forwarder.stats["ws_origin_refused"] == 1


def test_an_oversized_frame_and_a_frame_that_is_not_sip(pki):
    ws = transport(pki, True)

    async def main():
        async with serving(ws) as port:
            def client():
                c = Client(port, pki.ca)
                try:
                    assert isinstance(c.event(), AcceptConnection)
                    c.send(TextMessage("this is not SIP"))
                    c.send(TextMessage(options("WSS", "after-garbage").decode()))
                    answered = c.event()
                    c.send(BytesMessage(b"x" * 10_000))  # over the forwarder's 4000
                    return answered, c.event()
                finally:
                    c.close()
            answered, closed = await trio.to_thread.run_sync(client)
            assert isinstance(answered, TextMessage) and "after-garbage" in answered.data
            assert isinstance(closed, CloseConnection) and closed.code == 1009
            await wait_until(lambda: not ws.connections)
    trio.run(main)
    assert ws.forwarder.stats["ws_not_sip"] == 1
    assert ws.forwarder.stats["ws_oversize"] == 1


def test_a_silent_client_is_pinged_then_closed(pki):
    ws = transport(pki, False, ping=0.3)

    async def main():
        async with serving(ws) as port:
            def silent():
                c = Client(port)
                try:
                    events = []
                    while (event := c.event()) is not None:
                        events.append(type(event).__name__)
                        if isinstance(event, CloseConnection):
                            break
                    return events
                finally:
                    c.close()
            # Reads (never answers the ping): accept, ping, then the close.
            assert await trio.to_thread.run_sync(silent) == ["AcceptConnection", "Ping", "CloseConnection"]
            await wait_until(lambda: not ws.connections)
    trio.run(main)
    assert ws.forwarder.stats["ws_ping_timeout"] == 1


def test_an_upgrade_that_never_comes_is_cut(pki):
    ws = transport(pki, False, handshake_timeout=0.4)

    async def main():
        async with serving(ws) as port:
            def idle():
                with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
                    return sock.recv(100)
            assert await trio.to_thread.run_sync(idle) == b""
    trio.run(main)
    assert ws.forwarder.stats["ws_upgrade_timeout"] == 1


def test_a_frame_trickled_in_is_cut_after_the_message_timeout(pki):
    ws = transport(pki, False, message_timeout=0.5)

    async def main():
        async with serving(ws) as port:
            def trickle():
                c = Client(port)
                try:
                    assert isinstance(c.event(), AcceptConnection)
                    frame = c.ws.send(TextMessage("OPTIONS sip:edge@localhost SIP/2.0\r\n"))
                    # A byte every 0.2 s, never the whole frame, until the edge speaks.
                    for byte in frame[:20]:
                        c.sock.sendall(bytes([byte]))
                        if select.select([c.sock], [], [], 0.2)[0]:
                            break
                    while (event := c.event()) is not None:
                        if isinstance(event, CloseConnection):
                            return event.code
                    return None
                finally:
                    c.close()
            assert await trio.to_thread.run_sync(trickle) == 1008
            await wait_until(lambda: not ws.connections)
    trio.run(main)
    assert ws.forwarder.stats["ws_slow_message"] == 1
