"""`sipcluster up --listen` names transports, repeats, and takes --tls-cert
and --tls-key (issue 20.3); every edge gets every listener, 10 ports apart."""

from __future__ import annotations

import pytest

from cluster.cli import build_parser
from cluster.local import UpOptions
from tests.support.pki import make_pki


def options(*argv: str) -> UpOptions:
    return UpOptions.from_args(build_parser().parse_args(["up", *argv]))


def test_several_listeners_with_a_certificate(tmp_path):
    pki = make_pki(tmp_path)
    o = options("--edges", "2", "--listen", "127.0.0.1:5060", "--listen", "tls:127.0.0.1:5061",
                "--listen", "wss:127.0.0.1:8443", "--listen", "ws:127.0.0.1:8080",
                "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key))
    assert (o.host, o.port) == ("127.0.0.1", 5060)
    assert o.edge_listens(1) == ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060", "tls:127.0.0.1:5061",
                                 "wss:127.0.0.1:8443", "ws:127.0.0.1:8080"]
    assert o.edge_listens(2) == ["udp:127.0.0.1:5070", "tcp:127.0.0.1:5070", "tls:127.0.0.1:5071",
                                 "wss:127.0.0.1:8453", "ws:127.0.0.1:8090"]
    assert o.tls_cert == str(pki.server_cert.resolve())


def test_the_default_is_udp_and_tcp_on_5060():
    o = options()
    assert o.edge_listens(1) == ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"]


@pytest.mark.parametrize("argv, message", [
    (["--listen", "ws:127.0.0.1:8080"], "first address must be HOST:PORT or udp:HOST:PORT"),
    (["--listen", "127.0.0.1:5060", "--listen", "wss:127.0.0.1:8443"], "needs --tls-cert FILE and --tls-key FILE"),
    (["--listen", "sctp:127.0.0.1:5060"], "unknown transport 'sctp'"),
    (["--listen", "127.0.0.1:5060", "--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key"],
     "--tls-cert '/nonexistent.pem': no such file"),
    (["--listen", "127.0.0.1:65530"], "leaves no room"),
])
def test_unusable_listen_flags_say_why(argv, message):
    with pytest.raises(ValueError, match=message):
        options(*argv)
