"""Helpers for in-process tests of the edge's stream transports (TLS, WS,
WSS): a SIP request to send, and a transport run in a trio nursery while
blocking clients (Python's ``ssl``, wsproto over a socket) talk to it from
threads."""

from __future__ import annotations

import socket
import ssl
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from cluster.config import EdgeConfig, load_config
from nodes.edge.forwarder import Forwarder


def options(transport: str = "TLS", call_id: str | None = None) -> bytes:
    call_id = call_id or uuid.uuid4().hex
    return (f"OPTIONS sip:edge@127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/{transport} client.invalid;branch=z9hG4bK{call_id[:12]};rport\r\n"
            f"Max-Forwards: 70\r\nTo: <sip:edge@127.0.0.1>\r\nFrom: <sip:client@127.0.0.1>;tag=t1\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()


def edge_config(pki, **fields) -> EdgeConfig:
    fields.setdefault("tls_cert", str(pki.server_cert))
    fields.setdefault("tls_key", str(pki.server_key))
    fields.setdefault("listen", ["tls:127.0.0.1:5061"])
    return load_config(None, env={}, overrides={f"edge.{k}": v for k, v in fields.items()}).edge


def forwarder() -> Forwarder:
    """A real forwarder with no ring: every request is answered 503 on the
    connection it came on, which shows a message was framed and answered."""
    return Forwarder("edge-test", None, max_message=4000, server="test")


@asynccontextmanager
async def serving(transport, listen=(("127.0.0.1", 0),)):
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run, list(listen))
        yield transport.locals[0][1]
        nursery.cancel_scope.cancel()


def tls_client(port: int, ca: Path, *, server_hostname: str = "localhost",
               cert: tuple[Path, Path] | None = None, timeout: float = 20.0) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return context.wrap_socket(sock, server_hostname=server_hostname)


def read_message(sock, timeout: float = 20.0) -> bytes:
    """One SIP message without body (a 503 from the forwarder), b"" at EOF."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    return data


async def wait_until(predicate, timeout: float = 30.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.02)


class StreamUa:
    """A blocking SIP user agent on one TLS or WSS connection (RFC 3261
    §18.2.1 / RFC 7118): frames what it sends (Content-Length for TLS, one
    WebSocket message per SIP message for WSS) and keeps messages it read
    while waiting for another. ``contact_host`` is what it writes in Via
    and Contact: its socket address over TLS, an ``.invalid`` name over WSS
    (RFC 7118 §5.2: a browser knows no address of its own)."""

    def __init__(self, transport: str, port: int, ca: Path, *, host: str = "127.0.0.1",
                 origin: str | None = None) -> None:
        from wsproto import ConnectionType, WSConnection
        from wsproto.events import AcceptConnection, Request

        from cluster.sip import StreamFramer
        self.transport = transport.upper()
        context = ssl.create_default_context(cafile=str(ca))
        raw = socket.create_connection((host, port), timeout=20)
        self.sock = context.wrap_socket(raw, server_hostname="localhost")
        self.local = self.sock.getsockname()[:2]
        self.inbox: list = []
        self.tag = uuid.uuid4().hex[:10]
        self.framer = StreamFramer(65535)
        self.ws = None
        if self.transport == "WSS":
            self.ws = WSConnection(ConnectionType.CLIENT)
            headers = [(b"Origin", origin.encode())] if origin else []
            self.sock.sendall(self.ws.send(Request(host="localhost", target="/", subprotocols=["sip"],
                                                   extra_headers=headers)))
            accepted = False
            while not accepted:
                self.ws.receive_data(self.sock.recv(65536))
                accepted = any(isinstance(e, AcceptConnection) for e in self.ws.events())
            self.contact_host = f"{uuid.uuid4().hex[:12]}.invalid"
        else:
            self.contact_host = f"{self.local[0]}:{self.local[1]}"

    @property
    def uri_transport(self) -> str:
        return "ws" if self.transport == "WSS" else "tls"

    def contact(self, user: str) -> str:
        return f"<sip:{user}@{self.contact_host};transport={self.uri_transport}>"

    def close(self) -> None:
        self.sock.close()

    def via(self, branch: str | None = None) -> str:
        branch = branch or f"z9hG4bK{uuid.uuid4().hex[:16]}"
        return f"SIP/2.0/{self.transport} {self.contact_host};branch={branch};rport"

    def send(self, message) -> None:
        data = message if isinstance(message, bytes) else message.to_bytes()
        if self.ws is not None:
            from wsproto.events import TextMessage
            data = self.ws.send(TextMessage(data.decode()))
        self.sock.sendall(data)

    def _read(self) -> list:
        from cluster.sip import KEEPALIVE, parse_message
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed by the edge")
        if self.ws is None:
            raw = [m for m in self.framer.feed(data) if m is not KEEPALIVE]
        else:
            from wsproto.events import BytesMessage, Ping, TextMessage
            self.ws.receive_data(data)
            raw = []
            for event in self.ws.events():
                if isinstance(event, TextMessage):
                    raw.append(event.data.encode())
                elif isinstance(event, BytesMessage):
                    raw.append(bytes(event.data))
                elif isinstance(event, Ping):
                    self.sock.sendall(self.ws.send(event.response()))
        return [parse_message(m) for m in raw if m.strip()]

    def receive(self, match, timeout: float = 20.0):
        import time
        deadline = time.monotonic() + timeout
        while True:
            for i, message in enumerate(self.inbox):
                if match(message):
                    return self.inbox.pop(i)
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                self.inbox.extend(self._read())
            except TimeoutError:
                return None

    def transact(self, request, timeout: float = 20.0):
        """Send and wait for the final response (no retransmission: reliable)."""
        branch, method = request.via.branch, request.cseq.method
        self.send(request)
        while True:
            response = self.receive(lambda m: getattr(m, "status", None) is not None
                                    and m.via.branch == branch and m.cseq.method == method, timeout)
            if response is None or response.status >= 200:
                return response
