"""SIP over TLS at the edge (issue 20.1 and its bad input): the TLS transport
run in-process with a real forwarder (no ring, so each request is answered 503
on its connection), clients from Python's ssl module and openssl s_client."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess

import pytest
import trio
import trio.lowlevel

from nodes.edge.tls import TlsContexts, TlsTransport, name_matches
from tests.support.pki import make_pki
from tests.support.streams import edge_config, forwarder, options, read_message, serving, tls_client, wait_until


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def transport(pki, *, queue: int = 1000, handshake_timeout: float = 10.0, per_source: int = 64, **fields):
    fw = forwarder()
    contexts = TlsContexts(edge_config(pki, **fields), fw.stats)
    return TlsTransport(fw, contexts, idle_timeout=60, max_connections=100,
                        handshake_timeout=handshake_timeout, queue=queue, per_source=per_source)


def peer_cn(sock: ssl.SSLSocket) -> str:
    return dict(x[0] for x in sock.getpeercert()["subject"])["commonName"]


def test_a_request_over_tls_is_framed_and_answered_on_its_connection(pki):
    tls = transport(pki)

    async def main():
        async with serving(tls) as port:
            def client():
                with tls_client(port, pki.ca) as sock:
                    assert sock.version() in ("TLSv1.2", "TLSv1.3")
                    # Two requests in one write: the TCP framing splits them.
                    sock.sendall(options(call_id="first") + options(call_id="second"))
                    first = read_message(sock)
                    second = first if first.count(b"SIP/2.0 503") == 2 else first + read_message(sock)
                    return second
            replies = await trio.to_thread.run_sync(client)
        assert replies.count(b"SIP/2.0 503") == 2
        assert b"Call-ID: first" in replies and b"Call-ID: second" in replies
    trio.run(main)
    assert tls.forwarder.received["TLS"] == 2


def test_sni_chooses_the_certificate_for_the_name_asked_for(pki):
    cert, key = pki.server("voice", "voice.example.test", dns=("voice.example.test", "*.trunks.example.test"))
    tls = transport(pki, tls_sni=[f"{cert}:{key}"])

    async def main():
        async with serving(tls) as port:
            def names():
                seen = []
                for asked in ("voice.example.test", "a.trunks.example.test", "localhost"):
                    with tls_client(port, pki.ca, server_hostname=asked) as sock:
                        seen.append(peer_cn(sock))
                return seen
            assert await trio.to_thread.run_sync(names) == ["voice.example.test", "voice.example.test", "etcd"]
    trio.run(main)


def test_name_matching_takes_one_label_for_a_wildcard():
    assert name_matches("*.example.test", "a.example.test")
    assert not name_matches("*.example.test", "a.b.example.test")
    assert not name_matches("*.example.test", "example.test")
    assert name_matches("sip.example.test", "sip.example.test")


def test_client_certificates_required_for_an_interconnect(pki):
    tls = transport(pki, tls_verify_client="required", tls_client_ca=str(pki.ca))
    carrier = pki.client("carrier", "carrier.example.test")

    async def main():
        async with serving(tls) as port:
            def without():
                try:
                    with tls_client(port, pki.ca) as sock:
                        sock.sendall(options())
                        return read_message(sock)
                except (ssl.SSLError, ConnectionError):
                    return b""
            def with_cert():
                with tls_client(port, pki.ca, cert=carrier) as sock:
                    sock.sendall(options())
                    return read_message(sock)
            assert await trio.to_thread.run_sync(without) == b""
            assert (await trio.to_thread.run_sync(with_cert)).startswith(b"SIP/2.0 503")
            await wait_until(lambda: tls.forwarder.stats["tls_handshake_failed"] == 1)
    trio.run(main)


def test_certificates_reload_on_change_and_sighup_without_dropping_connections(pki, tmp_path):
    cert, key = tmp_path / "edge.crt", tmp_path / "edge.key"
    shutil.copy(pki.server_cert, cert)
    shutil.copy(pki.server_key, key)
    tls = transport(pki, tls_cert=str(cert), tls_key=str(key), tls_reload_interval=0.05)
    contexts = tls.contexts

    async def main():
        async with trio.open_nursery() as nursery:
            await nursery.start(contexts.run)
            async with serving(tls) as port:
                old = await trio.to_thread.run_sync(lambda: tls_client(port, pki.ca))
                try:
                    assert peer_cn(old) == "etcd"
                    # A Secret update: new files (written next to, then renamed over, the old).
                    new_cert, new_key = pki.server("rotated", "rotated")
                    for source, target in ((new_cert, cert), (new_key, key)):
                        shutil.copy(source, f"{target}.tmp")
                        os.replace(f"{target}.tmp", target)
                    await wait_until(lambda: contexts.generation == 2)

                    def fresh():
                        with tls_client(port, pki.ca) as sock:
                            return peer_cn(sock)
                    assert await trio.to_thread.run_sync(fresh) == "rotated"

                    def old_still_works():
                        old.sendall(options())
                        return read_message(old)
                    assert (await trio.to_thread.run_sync(old_still_works)).startswith(b"SIP/2.0 503")
                    # SIGHUP reloads too, whatever the files' stamps say.
                    os.kill(os.getpid(), signal.SIGHUP)
                    await wait_until(lambda: contexts.generation == 3)
                finally:
                    old.close()
            nursery.cancel_scope.cancel()
    trio.run(main)
    assert tls.forwarder.stats["tls_reloaded"] == 2


def test_a_broken_certificate_file_keeps_the_previous_one(pki, tmp_path):
    cert, key = tmp_path / "edge.crt", tmp_path / "edge.key"
    shutil.copy(pki.server_cert, cert)
    shutil.copy(pki.server_key, key)
    tls = transport(pki, tls_cert=str(cert), tls_key=str(key))
    before = tls.contexts.server
    cert.write_text("half-written\n")
    assert tls.contexts.check() is False
    assert tls.contexts.server is before
    assert tls.forwarder.stats["tls_reload_failed"] == 1


def test_a_handshake_that_never_completes_is_cut_after_the_timeout(pki):
    tls = transport(pki, handshake_timeout=0.5)

    async def main():
        async with serving(tls) as port:
            def silent():
                with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                    return sock.recv(100)  # b"" once the edge cuts it
            assert await trio.to_thread.run_sync(silent) == b""
            await wait_until(lambda: tls.handshaking == 0 and not tls.connections)
    trio.run(main)
    assert tls.forwarder.stats["tls_handshake_timeout"] == 1


def test_plain_text_on_the_tls_port_is_counted_and_closed(pki):
    tls = transport(pki)

    async def main():
        async with serving(tls) as port:
            def plain():
                with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                    sock.sendall(options("TCP"))
                    try:
                        while sock.recv(4096):
                            pass
                    except ConnectionResetError:
                        pass
            await trio.to_thread.run_sync(plain)
            await wait_until(lambda: tls.forwarder.stats["tls_handshake_failed"] == 1)
            # Still serving.
            def proper():
                with tls_client(port, pki.ca) as sock:
                    sock.sendall(options())
                    return read_message(sock)
            assert (await trio.to_thread.run_sync(proper)).startswith(b"SIP/2.0 503")
    trio.run(main)
    assert tls.forwarder.received["TLS"] == 1


def test_openssl_s_client_tls_1_1_is_refused_and_tls_1_2_accepted(pki):
    tls = transport(pki)

    async def main():
        async with serving(tls) as port:
            def s_client(*flags):
                return subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}",
                                       "-CAfile", str(pki.ca), "-servername", "localhost", *flags],
                                      input=b"", capture_output=True, timeout=60)
            old = await trio.to_thread.run_sync(s_client, "-tls1_1")
            good = await trio.to_thread.run_sync(s_client, "-tls1_2")
            assert old.returncode != 0
            assert good.returncode == 0 and b"Verify return code: 0 (ok)" in good.stdout
            assert b"ECDHE" in good.stdout
            await wait_until(lambda: tls.forwarder.stats["tls_handshake_failed"] >= 1)
    trio.run(main)


def test_a_client_that_stops_reading_is_closed_when_its_queue_is_full(pki):
    tls = transport(pki, queue=4)
    big = b"SIP/2.0 200 OK\r\nContent-Length: 60000\r\n\r\n" + b"x" * 60000

    async def main():
        async with serving(tls) as port:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", port))
            context = ssl.create_default_context(cafile=str(pki.ca))
            client = await trio.to_thread.run_sync(lambda: context.wrap_socket(sock, server_hostname="localhost"))
            try:
                client.sendall(options())
                await wait_until(lambda: len(tls.connections) == 1)
                (conn,) = tls.connections.values()
                sent = 0
                # The client reads nothing: the writer blocks, the queue fills.
                with trio.fail_after(60):
                    while conn.id in tls.connections and sent < 10_000:
                        tls.send(big, conn.peer, conn.id)
                        sent += 1
                        await trio.lowlevel.checkpoint()
                await wait_until(lambda: not tls.connections)
                assert sent < 1000  # bounded: a few queued frames, not everything sent
            finally:
                client.close()
    trio.run(main)
    assert tls.forwarder.stats["tls_write_queue_full_closed"] == 1


def test_outgoing_tls_checks_the_peer_against_the_configured_ca(pki, tmp_path):
    peer_cert, peer_key = pki.server("peer", "peer", ips=("127.0.0.1",))
    other = make_pki(tmp_path / "other")
    good = transport(pki, tls_ca=str(pki.ca))
    wrong = transport(pki, tls_ca=str(other.ca))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(str(peer_cert), str(peer_key))
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(30)
    peer = listener.getsockname()

    def accept_one() -> bytes:
        raw, _ = listener.accept()
        try:
            with server.wrap_socket(raw, server_side=True) as sock:
                return read_message(sock)
        except (ssl.SSLError, OSError):
            return b""

    async def main():
        async with trio.open_nursery() as nursery:
            await nursery.start(good.run_outgoing)
            await nursery.start(wrong.run_outgoing)
            message = options(call_id="outgoing")
            assert wrong.send(message, peer, None)
            assert await trio.to_thread.run_sync(accept_one) == b""
            await wait_until(lambda: wrong.forwarder.stats["tls_out_handshake_failed"] == 1)
            assert good.send(message, peer, None)
            assert await trio.to_thread.run_sync(accept_one) == message
            nursery.cancel_scope.cancel()
    try:
        trio.run(main)
    finally:
        listener.close()


def test_a_peer_that_resets_its_connection_is_not_a_bug(pki):
    tls = transport(pki)

    async def main():
        async with serving(tls) as port:
            def reset():
                sock = tls_client(port, pki.ca)
                sock.sendall(options())
                read_message(sock)
                # SO_LINGER 0: close sends RST, the edge's read fails.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
            await trio.to_thread.run_sync(reset)
            await wait_until(lambda: not tls.connections)
    trio.run(main)
    assert tls.forwarder.stats["internal_error"] == 0


def test_the_per_source_limit_counts_tls_connections_under_tls(pki):
    tls = transport(pki, per_source=1)

    async def main():
        async with serving(tls) as port:
            def two():
                with tls_client(port, pki.ca) as first:
                    first.sendall(options(call_id="kept"))
                    assert b"SIP/2.0 503" in read_message(first)
                    with tls_client(port, pki.ca) as second:
                        second.settimeout(20)
                        try:
                            return second.recv(100)  # closed by the edge after the handshake
                        except OSError:
                            return b""
            assert await trio.to_thread.run_sync(two) == b""
    trio.run(main)
    stats = tls.forwarder.stats
    assert stats["drop_tls_per_source"] == 1 and "drop_tcp_per_source" not in stats
