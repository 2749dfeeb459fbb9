"""edge.listen transports and the edge.tls_* files: an unusable certificate,
key or CA stops the edge at start-up naming the field (issue 20.3)."""

from __future__ import annotations

import pytest

from cluster.config import ConfigError, Listen, load_config
from tests.support.pki import make_pki

NO_ENV: dict[str, str] = {}


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def edge(**overrides):
    return load_config(None, env=NO_ENV, overrides={f"edge.{k}": v for k, v in overrides.items()}).edge


def test_a_bare_address_means_udp_and_tcp_and_transports_are_named(pki):
    config = edge(listen=["127.0.0.1:5070", "tls:127.0.0.1:5071", "ws:[::1]:8080", "wss:127.0.0.1:8443"],
                  tls_cert=str(pki.server_cert), tls_key=str(pki.server_key))
    assert config.listen == (Listen("udp", "127.0.0.1", 5070), Listen("tcp", "127.0.0.1", 5070),
                             Listen("tls", "127.0.0.1", 5071), Listen("ws", "::1", 8080),
                             Listen("wss", "127.0.0.1", 8443))


def test_the_environment_takes_bare_and_named_entries():
    config = load_config(None, env={"SIPCLUSTER_EDGE_LISTEN": "127.0.0.1:5070, ws:127.0.0.1:8080"})
    assert [str(entry) for entry in config.edge.listen] == [
        "udp:127.0.0.1:5070", "tcp:127.0.0.1:5070", "ws:127.0.0.1:8080"]


def test_a_key_that_does_not_match_the_certificate_names_tls_cert(pki, tmp_path):
    _, other_key = pki.client("other", "other")
    with pytest.raises(ConfigError) as info:
        edge(listen=["tls:127.0.0.1:5061"], tls_cert=str(pki.server_cert), tls_key=str(other_key))
    assert info.value.field == "edge.tls_cert"
    assert "cannot load" in info.value.problem


def test_an_unreadable_certificate_names_tls_cert(pki, tmp_path):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ConfigError) as info:
        edge(listen=["wss:127.0.0.1:8443"], tls_cert=str(garbage), tls_key=str(pki.server_key))
    assert info.value.field == "edge.tls_cert"
    missing = tmp_path / "missing.pem"
    with pytest.raises(ConfigError) as info:
        edge(listen=["tls:127.0.0.1:5061"], tls_cert=str(missing), tls_key=str(pki.server_key))
    assert info.value.field == "edge.tls_cert" and str(missing) in info.value.problem


def test_a_bad_ca_names_its_field(pki, tmp_path):
    bad = tmp_path / "bad-ca.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    for field in ("tls_client_ca", "tls_ca"):
        with pytest.raises(ConfigError) as info:
            edge(**{"listen": ["tls:127.0.0.1:5061"], "tls_cert": str(pki.server_cert),
                    "tls_key": str(pki.server_key), "tls_verify_client": "optional",
                    "tls_client_ca": str(pki.ca), field: str(bad)})
        assert info.value.field == f"edge.{field}"


def test_sni_pairs_are_loaded(pki, tmp_path):
    cert, key = pki.client("sni", "sni")
    config = edge(listen=["tls:127.0.0.1:5061"], tls_cert=str(pki.server_cert), tls_key=str(pki.server_key),
                  tls_sni=[f"{cert}:{key}"])
    assert config.tls_sni == (f"{cert}:{key}",)
    with pytest.raises(ConfigError) as info:
        edge(listen=["tls:127.0.0.1:5061"], tls_cert=str(pki.server_cert), tls_key=str(pki.server_key),
             tls_sni=[f"{cert}:{pki.server_key}"])
    assert info.value.field == "edge.tls_sni[0]"


def test_a_cli_style_error_says_where_the_value_came_from(pki):
    with pytest.raises(ConfigError) as info:
        load_config(None, env={"SIPCLUSTER_EDGE_LISTEN": "wss:127.0.0.1:8443"})
    assert info.value.field == "edge.tls_cert"
