"""The edge's listeners survive what one message or connection meets: a refused
destination, a bug in ingress (UDP and TCP)."""

from __future__ import annotations

import socket

import pytest

from nodes.edge.forwarder import Forwarder
from nodes.edge.udp import UdpListener


@pytest.mark.parametrize("peer", [("127.0.0.1", 70000), ("127.0.0.1", -1), ("not an address\x00", 5060)])
def test_a_refused_destination_costs_the_message_not_the_listener(peer):
    listener = UdpListener("127.0.0.1", 0, Forwarder("edge-t", None, max_message=4000, server="test"))
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(10)
    try:
        assert listener.send(b"SIP/2.0 200 OK\r\n\r\n", peer) is False
        assert listener.forwarder.stats["drop_udp_send"] == 1
        # The socket still sends.
        assert listener.send(b"still here", receiver.getsockname()) is True
        assert receiver.recvfrom(100)[0] == b"still here"
    finally:
        listener.sock.close()
        receiver.close()


def test_a_bug_met_by_one_datagram_costs_only_that_datagram():
    import trio

    forwarder = Forwarder("edge-t", None, max_message=4000, server="test")
    seen: list[bytes] = []

    def ingress(data, transport, source, local, conn, frames):
        if data.startswith(b"boom"):
            raise RuntimeError("a bug in ingress")
        seen.append(data)
        return None

    forwarder.ingress = ingress
    forwarder.flush = lambda frames: []
    listener = UdpListener("127.0.0.1", 0, forwarder)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    async def main():
        async with trio.open_nursery() as nursery:
            await nursery.start(listener.run)
            sender.sendto(b"boom 1", listener.local)
            sender.sendto(b"OPTIONS after", listener.local)
            with trio.fail_after(30):
                while not seen:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        sender.close()
    assert seen == [b"OPTIONS after"]
    assert forwarder.stats["internal_error"] == 1


def test_a_bug_on_one_tcp_connection_closes_it_and_the_listener_goes_on():
    import trio

    from nodes.edge.tcp import TcpTransport

    forwarder = Forwarder("edge-t", None, max_message=4000, server="test")
    seen: list[bytes] = []

    def ingress(data, transport, source, local, conn, frames=None):
        if b"boom" in data:
            raise RuntimeError("a bug in ingress")
        seen.append(data)
        return None

    forwarder.ingress = ingress
    tcp = TcpTransport(forwarder, idle_timeout=60, max_connections=10)
    message = (b"OPTIONS sip:%s@localhost SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bK1\r\n"
               b"Call-ID: c1\r\nContent-Length: 0\r\n\r\n")

    async def main():
        async with trio.open_nursery() as nursery:
            await nursery.start(tcp.run, [("127.0.0.1", 0)])
            host, port = tcp.locals[0]
            bad = await trio.open_tcp_stream(host, port)
            await bad.send_all(message % b"boom")
            with trio.fail_after(30):
                assert await bad.receive_some(100) == b"", "the connection that met the bug is closed"
            good = await trio.open_tcp_stream(host, port)
            await good.send_all(message % b"fine")
            with trio.fail_after(30):
                while not seen:
                    await trio.sleep(0.01)
            await good.aclose()
            await bad.aclose()
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert seen == [message % b"fine"]
    assert forwarder.stats["internal_error"] == 1
