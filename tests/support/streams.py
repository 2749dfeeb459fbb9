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
