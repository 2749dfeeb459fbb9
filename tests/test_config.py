"""Node configuration: layering, validation that names the field, reference, TOML round trip."""

from __future__ import annotations

import dataclasses
import pickle
import re

import pytest
from hypothesis import given, strategies as st

from cluster.config import (
    CONFIG_ENV, ClusterConfig, Config, ConfigError, EdgeConfig, HttpConfig, Listen, WorkerConfig,
    default_node_id, load_config, main, reference_markdown,
)

NO_ENV: dict[str, str] = {}


def write(tmp_path, text: str, name: str = "node.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


# -- defaults and layering ---------------------------------------------------

def test_defaults_load_without_file_or_environment():
    config = load_config(env=NO_ENV)
    assert config == Config()
    assert config.cluster.prefix == "/sipcluster"
    assert config.cluster.etcd == ("http://127.0.0.1:2379",)
    assert config.cluster.lease_ttl == 5
    assert config.cluster.node_id == default_node_id()
    assert config.edge.listen == (Listen("udp", "127.0.0.1", 5060), Listen("tcp", "127.0.0.1", 5060))
    assert config.edge.advertised() == ("127.0.0.1", 5060)
    assert config.edge.link == "tcp://127.0.0.1:0"
    assert (config.worker.t1, config.worker.t2, config.worker.t4) == (0.5, 4.0, 5.0)
    assert config.worker.app == "cluster.app.default:application"
    assert config.http.address() == ("127.0.0.1", 0)
    assert (config.log.level, config.log.format) == ("info", "json")


def test_default_node_id_is_hostname_dash_pid_within_the_id_alphabet(monkeypatch):
    monkeypatch.setattr("socket.gethostname", lambda: "Pod_ä.example/" + "x" * 80)
    node_id = default_node_id()
    assert len(node_id) == 64
    assert node_id.startswith("Pod_-.example-x")
    assert node_id.endswith(f"-{__import__('os').getpid()}")
    assert ClusterConfig(node_id=node_id).node_id == node_id


def test_precedence_defaults_file_env_overrides(tmp_path):
    path = write(tmp_path, """
[cluster]
lease_ttl = 10
prefix = "/from-file"
node_id = "file-node"

[log]
level = "debug"
""")
    env = {"SIPCLUSTER_CLUSTER_LEASE_TTL": "20", "SIPCLUSTER_CLUSTER_NODE_ID": "env-node"}
    config = load_config(path, env=env, overrides={"cluster.lease_ttl": 30, "edge.queue": None})
    assert config.cluster.lease_ttl == 30          # override beats env beats file
    assert config.cluster.node_id == "env-node"    # env beats file
    assert config.cluster.prefix == "/from-file"   # file beats default
    assert config.log.level == "debug"
    assert config.edge.queue == 256                # a None override (flag not given) is ignored


def test_config_path_from_environment_when_no_path_given(tmp_path):
    path = write(tmp_path, '[http]\nlisten = ""\n')
    config = load_config(env={CONFIG_ENV: str(path)})
    assert config.http.listen == ""
    assert config.http.address() is None


def test_environment_syntax_lists_numbers_and_empty_optional():
    env = {
        "SIPCLUSTER_EDGE_LISTEN": "udp:0.0.0.0:5060, tcp:[::]:5070,",
        "SIPCLUSTER_EDGE_ADVERTISE": "sip.example.com",
        "SIPCLUSTER_EDGE_RATE_LIMIT": "12.5",
        "SIPCLUSTER_WORKER_DOMAINS": "example.com,example.org",
        "SIPCLUSTER_WORKER_NONCE_SECRET": "",
        "SIPCLUSTER_LOG_LEVEL": "WARNING",
    }
    config = load_config(env=env)
    assert config.edge.listen == (Listen("udp", "0.0.0.0", 5060), Listen("tcp", "::", 5070))
    assert config.edge.advertised() == ("sip.example.com", 5060)
    assert config.edge.rate_limit == 12.5
    assert config.worker.domains == ("example.com", "example.org")
    assert config.worker.nonce_secret is None
    assert config.log.level == "warning"


def test_string_overrides_use_environment_syntax():
    config = load_config(env=NO_ENV, overrides={"edge.listen": "udp:127.0.0.2:5080", "worker.t2": "8",
                                                "cluster.etcd": ["http://10.0.0.1:2379"]})
    assert config.edge.listen == (Listen("udp", "127.0.0.2", 5080),)
    assert config.worker.t2 == 8.0
    assert config.cluster.etcd == ("http://10.0.0.1:2379",)
    assert config.cluster.etcd_endpoints() == (("10.0.0.1", 2379),)


def test_toml_integers_are_accepted_for_float_fields(tmp_path):
    config = load_config(write(tmp_path, "[worker]\nt1 = 1\nt2 = 8\n"), env=NO_ENV)
    assert config.worker.t1 == 1.0 and isinstance(config.worker.t1, float)


def test_sections_validate_when_built_directly():
    edge = EdgeConfig(listen=["udp:[::1]:5060"])
    assert edge.listen == (Listen("udp", "::1", 5060),)
    with pytest.raises(ConfigError) as info:
        WorkerConfig(t1=5.0)
    assert info.value.field == "worker.t2"


# -- validation names the field ----------------------------------------------

BAD_VALUES = [
    ("edge.listen", ["udp:127.0.0.1:5060", "udp:127.0.0.1:99999"], "edge.listen[1]",
     "'udp:127.0.0.1:99999' has port 99999 outside 1-65535"),
    ("edge.listen", ["udp:127.0.0.1:0"], "edge.listen[0]", "has port 0 outside 1-65535"),
    ("edge.listen", ["sctp:127.0.0.1:5060"], "edge.listen[0]", "unknown transport 'sctp'"),
    ("edge.listen", ["tls:127.0.0.1:5061"], "edge.tls_cert", "required by edge.listen[0] 'tls:127.0.0.1:5061'"),
    ("edge.listen", ["wss:127.0.0.1:443"], "edge.tls_cert", "required by edge.listen[0]"),
    ("edge.listen", ["tcp:127.0.0.1:5060", "ws:127.0.0.1:5060"], "edge.listen[1]", "takes the TCP port of"),
    ("edge.tls_verify_client", "maybe", "edge.tls_verify_client", "is not one of off, optional, required"),
    ("edge.tls_verify_client", "required", "edge.tls_client_ca", "required with edge.tls_verify_client"),
    ("edge.tls_cert", "/nonexistent/c.pem", "edge.tls_key", "required together with edge.tls_cert"),
    ("edge.tls_ca", "/nonexistent/ca.pem", "edge.tls_ca", "cannot read '/nonexistent/ca.pem'"),
    ("edge.tls_sni", ["just-a-file.pem"], "edge.tls_sni[0]", "is not CERT_FILE:KEY_FILE"),
    ("edge.tls_handshake_timeout", 0, "edge.tls_handshake_timeout", "not greater than 0"),
    ("edge.tls_reload_interval", 0, "edge.tls_reload_interval", "not greater than 0"),
    ("edge.ws_ping_interval", -1, "edge.ws_ping_interval", "not greater than 0"),
    ("edge.listen", ["udp:::1:5060"], "edge.listen[0]", "needs brackets around an IPv6 address"),
    ("edge.listen", ["udp:127.0.0.1"], "edge.listen[0]", "has no port"),
    ("edge.listen", ["udp:bad host:5060"], "edge.listen[0]", "not an IP address or host name"),
    ("edge.listen", ["udp:127.0.0.1:5060", "udp:127.0.0.1:5060"], "edge.listen[1]", "listed twice"),
    ("edge.listen", [], "edge.listen", "at least one"),
    ("edge.listen", [5060], "edge.listen[0]", "expected a string, got int 5060"),
    ("edge.listen", ["udp:0.0.0.0:5060"], "edge.advertise", "must be set"),
    ("edge.advertise", "[::]:5060", "edge.advertise", "unspecified address"),
    ("edge.advertise", "host:70000", "edge.advertise", "has port 70000 outside 1-65535"),
    ("edge.link", "udp://127.0.0.1:5", "edge.link", "is not tcp://HOST:PORT"),
    ("edge.link", "tcp://127.0.0.1", "edge.link", "has no port"),
    ("edge.max_message", 512, "edge.max_message", "512 is outside 1024..1048576"),
    ("edge.max_message", 2_000_000, "edge.max_message", "outside 1024..1048576"),
    ("edge.udp_batch", 0, "edge.udp_batch", "less than 1"),
    ("edge.rate_limit", -1, "edge.rate_limit", "less than 0"),
    ("edge.rate_ban_time", 0, "edge.rate_ban_time", "not greater than 0"),
    ("edge.rate_exempt", ["10.0.0.0/8", "10.0.0.1/8"], "edge.rate_exempt[1]", "is not a CIDR network"),
    ("edge.rate_sources", 0, "edge.rate_sources", "less than 1"),
    ("edge.max_bans", 0, "edge.max_bans", "less than 1"),
    ("edge.user_agent_block", ["sipvicious", " "], "edge.user_agent_block[1]", "not a non-empty ASCII text"),
    ("worker.auth_fail_limit", -1, "worker.auth_fail_limit", "less than 0"),
    ("worker.auth_fail_window", 0, "worker.auth_fail_window", "not greater than 0"),
    ("worker.auth_ban_time", -5, "worker.auth_ban_time", "not greater than 0"),
    ("edge.queue", "ten", "edge.queue", "is not an integer"),
    ("edge.queue", True, "edge.queue", "expected an integer, got bool True"),
    ("cluster.prefix", "sipcluster", "cluster.prefix", "must look like '/sipcluster'"),
    ("cluster.prefix", "/sip/", "cluster.prefix", "must look like"),
    ("cluster.etcd", ["127.0.0.1:2379"], "cluster.etcd[0]", "is not an http:// or https:// URL"),
    ("cluster.etcd", ["http://127.0.0.1:2379", "http://h:0"], "cluster.etcd[1]", "has port 0 outside 1-65535"),
    ("cluster.etcd", [], "cluster.etcd", "at least one"),
    ("cluster.etcd", ["https://10.0.0.1:2379"], "cluster.etcd_ca", "required when the etcd endpoints use https"),
    ("cluster.record_route", "0.0.0.0", "cluster.record_route", "unspecified address"),
    ("cluster.record_route", "sip.example.net:0", "cluster.record_route", "outside 1-65535"),
    ("cluster.record_route", "bad host", "cluster.record_route", "not an IP address or host name"),
    ("cluster.lease_ttl", 1, "cluster.lease_ttl", "1 is outside 2..60"),
    ("cluster.lease_ttl", 61, "cluster.lease_ttl", "61 is outside 2..60"),
    ("cluster.lease_ttl", 5.5, "cluster.lease_ttl", "expected an integer, got float 5.5"),
    ("cluster.node_id", "node/1", "cluster.node_id", "does not match"),
    ("cluster.node_id", "n" * 65, "cluster.node_id", "does not match"),
    ("cluster.etcd_user", "root", "cluster.etcd_password", "required together with cluster.etcd_user"),
    ("cluster.etcd_ca", "/nonexistent/ca.pem", "cluster.etcd_ca", "set, but the etcd endpoints use plain http"),
    ("cluster.link_secret_dir", "/nonexistent/keys", "cluster.link_secret_dir", "no such directory"),
    ("worker.trusted", ["10.0.0.0/8", "10.0.0.1/8"], "worker.trusted[1]", "is not a CIDR network"),
    ("worker.trusted", ["not-a-net"], "worker.trusted[0]", "is not a CIDR network"),
    ("worker.t1", 0, "worker.t1", "0 is not greater than 0"),
    ("worker.t2", 0.25, "worker.t2", "must be greater than worker.t1 (0.5)"),
    ("worker.t4", float("nan"), "worker.t4", "not a finite number"),
    ("worker.app", "cluster.app.default", "worker.app", "is not 'package.module:object'"),
    ("worker.domains", ["exa mple.com"], "worker.domains[0]", "not a host name"),
    ("worker.nonce_secret", "short", "worker.nonce_secret", "shorter than 16"),
    ("worker.registrar_default_expires", 30, "worker.registrar_default_expires", "must lie between"),
    ("worker.registrar_min_expires", 0, "worker.registrar_min_expires", "less than 1"),
    ("http.listen", "127.0.0.1", "http.listen", "has no port"),
    ("http.listen", "localhost:http", "http.listen", "has port 'http' that is not a number"),
    ("log.level", "verbose", "log.level", "'verbose' is not one of debug, info, warning, error"),
    ("log.format", "xml", "log.format", "is not one of json, text"),
]


@pytest.mark.parametrize("key, value, field, message", BAD_VALUES, ids=[f"{b[0]}={b[1]!r}"[:60] for b in BAD_VALUES])
def test_bad_value_is_rejected_naming_its_field(key, value, field, message):
    with pytest.raises(ConfigError) as info:
        load_config(env=NO_ENV, overrides={key: value})
    assert info.value.field == field
    assert message in str(info.value)
    assert str(info.value).startswith(f"{field}: ")
    assert isinstance(info.value, ValueError)


def test_error_says_which_source_set_the_value(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(env={"SIPCLUSTER_EDGE_LISTEN": "udp:127.0.0.1:5060,udp:127.0.0.1:99999"})
    assert str(info.value) == ("edge.listen[1]: 'udp:127.0.0.1:99999' has port 99999 outside 1-65535 "
                               "(from environment SIPCLUSTER_EDGE_LISTEN)")
    path = write(tmp_path, "[cluster]\nlease_ttl = 100\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env=NO_ENV)
    assert info.value.field == "cluster.lease_ttl"
    assert f"(from file {path})" in str(info.value)


def test_unparseable_environment_numbers_name_the_field():
    with pytest.raises(ConfigError) as info:
        load_config(env={"SIPCLUSTER_CLUSTER_LEASE_TTL": "5s"})
    assert info.value.field == "cluster.lease_ttl"
    assert "SIPCLUSTER_CLUSTER_LEASE_TTL='5s' is not an integer" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_config(env={"SIPCLUSTER_WORKER_T1": "fast"})
    assert info.value.field == "worker.t1"


def test_config_error_pickles_with_its_field():
    error = pickle.loads(pickle.dumps(ConfigError("edge.queue", "0 is less than 1")))
    assert (error.field, error.problem, str(error)) == ("edge.queue", "0 is less than 1", "edge.queue: 0 is less than 1")


def test_cert_and_key_must_come_together(tmp_path):
    ca, cert = write(tmp_path, "ca", "ca.pem"), write(tmp_path, "cert", "cert.pem")
    with pytest.raises(ConfigError) as info:
        load_config(env=NO_ENV, overrides={"cluster.etcd": ["https://e:2379"], "cluster.etcd_ca": str(ca),
                                           "cluster.etcd_cert": str(cert)})
    assert info.value.field == "cluster.etcd_key"
    with pytest.raises(ConfigError) as info:
        load_config(env=NO_ENV, overrides={"cluster.etcd": ["https://e:2379"], "cluster.etcd_ca": str(ca),
                                           "cluster.etcd_cert": str(cert), "cluster.etcd_key": str(tmp_path / "no")})
    assert info.value.field == "cluster.etcd_key"
    assert "no such file" in info.value.problem


def test_mixed_etcd_schemes_are_rejected(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(env=NO_ENV, overrides={"cluster.etcd": "https://a:2379,http://b:2379"})
    assert info.value.field == "cluster.etcd[1]"


# -- typo protection -----------------------------------------------------------

def test_unknown_environment_variable_is_rejected_with_a_suggestion():
    with pytest.raises(ConfigError) as info:
        load_config(env={"SIPCLUSTER_EDGE_LISTN": "udp:127.0.0.1:5060"})
    assert info.value.field == "SIPCLUSTER_EDGE_LISTN"
    assert "did you mean SIPCLUSTER_EDGE_LISTEN?" in str(info.value)


def test_unrelated_environment_is_ignored():
    env = {"PATH": "/bin", "sipcluster_edge_listen": "x", "ETCD_X": "1", "SIPCLUSTER_STATE_DIR": "/tmp/up"}
    assert load_config(env=env) == Config()


@pytest.mark.parametrize("text, field, message", [
    ("[edge]\nlistne = []\n", "edge.listne", "unknown key; did you mean edge.listen?"),
    ("[edgy]\n", "edgy", "unknown section; did you mean edge?"),
    ('lease_ttl = 5\n', "lease_ttl", "did you mean cluster.lease_ttl (under [cluster])?"),
    ("edge = 5\n", "edge", "must be a table [edge]"),
    ("[edge\n", None, "not valid TOML"),
])
def test_unknown_or_malformed_file_content_is_rejected(tmp_path, text, field, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env=NO_ENV)
    assert info.value.field == (str(path) if field is None else field)
    assert message in str(info.value)


def test_missing_file_and_unknown_override_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "absent.toml", env=NO_ENV)
    with pytest.raises(ConfigError) as info:
        load_config(env=NO_ENV, overrides={"edge.listens": ["udp:127.0.0.1:5060"]})
    assert info.value.field == "edge.listens"


# -- listen addresses ------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("udp:127.0.0.1:5060", Listen("udp", "127.0.0.1", 5060)),
    ("TCP:0.0.0.0:5070", Listen("tcp", "0.0.0.0", 5070)),
    ("udp:[::1]:5060", Listen("udp", "::1", 5060)),
    ("tcp:[2001:db8::10]:65535", Listen("tcp", "2001:db8::10", 65535)),
    ("udp:sip.example.com:5060", Listen("udp", "sip.example.com", 5060)),
    ("tls:127.0.0.1:5061", Listen("tls", "127.0.0.1", 5061)),
    ("ws:localhost:8080", Listen("ws", "localhost", 8080)),
])
def test_listen_parses_and_prints_back(text, expected):
    parsed = Listen.parse(text)
    assert parsed == expected
    assert Listen.parse(str(parsed)) == parsed
    assert str(parsed) == text[:3].lower() + text[3:]


@pytest.mark.parametrize("text, message", [
    ("udp", "is not TRANSPORT:HOST:PORT"),
    ("udp:[::1:5060", "unclosed '['"),
    ("udp:[::1]5060", "text after ']'"),
    ("udp:[fe80::zz]:5060", "not an IPv6 address"),
    ("udp:127.0.0.1:", "port '' that is not a number"),
    ("udp:127.0.0.1:５０６０", "not a number"),
    ("udp:127.0.0.1:123456789012345678901234567890", "outside 1-65535"),
])
def test_listen_parse_errors_say_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Listen.parse(text)


@given(st.text(max_size=40))
def test_listen_parse_gives_a_listen_or_value_error(text):
    try:
        parsed = Listen.parse(text)
    except ValueError:
        return
    assert Listen.parse(str(parsed)) == parsed


def test_advertise_forms():
    assert EdgeConfig(advertise="203.0.113.7:5080").advertised() == ("203.0.113.7", 5080)
    assert EdgeConfig(advertise="[2001:db8::1]").advertised() == ("2001:db8::1", 5060)
    assert EdgeConfig(listen=["udp:0.0.0.0:5070"], advertise="sip.example.com").advertised() == ("sip.example.com", 5070)


def test_trusted_networks_are_parsed():
    networks = WorkerConfig(trusted=["10.0.0.0/8", "2001:db8::/32"]).trusted_networks()
    assert [str(n) for n in networks] == ["10.0.0.0/8", "2001:db8::/32"]


def test_unix_and_inproc_links_are_accepted():
    assert EdgeConfig(link="ipc:///tmp/edge.sock").link == "ipc:///tmp/edge.sock"
    assert WorkerConfig(link="tcp://*:7000").link == "tcp://*:7000"
    assert HttpConfig(listen="[::1]:9100").address() == ("::1", 9100)


# -- reference and round trip -------------------------------------------------

def test_reference_lists_every_section_field_and_env_var():
    reference = reference_markdown()
    config = Config()
    for section in dataclasses.fields(Config):
        assert f"## [{section.name}]" in reference
        for f in dataclasses.fields(getattr(config, section.name)):
            env = f"SIPCLUSTER_{section.name}_{f.name}".upper()
            rows = [line for line in reference.splitlines() if line.startswith(f"| `{f.name}` |") and env in line]
            assert len(rows) == 1, (section.name, f.name)
            assert f.metadata["doc"].replace("|", "\\|") in rows[0]
    assert "| `node_id` | string | `<hostname>-<pid>` |" in reference
    assert '`["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"]`' in reference


def test_module_main_prints_reference(capsys):
    assert main(["--reference"]) == 0
    assert capsys.readouterr().out == reference_markdown()


def test_module_main_reports_bad_file(tmp_path, capsys, monkeypatch):
    for name in [n for n in __import__("os").environ if n.startswith("SIPCLUSTER_")]:
        monkeypatch.delenv(name)
    assert main([str(write(tmp_path, "[log]\nlevel = 3\n"))]) == 2
    assert "log.level: expected a string, got int 3" in capsys.readouterr().err


def test_to_toml_round_trips_through_load_config(tmp_path):
    ca, cert, key = (write(tmp_path, "x", n) for n in ("ca.pem", "cert.pem", "key.pem"))
    keys = tmp_path / "curve"
    keys.mkdir()
    original = load_config(env=NO_ENV, overrides={
        "cluster.etcd": ["https://10.0.0.1:2379", "https://[2001:db8::2]:2379"],
        "cluster.etcd_ca": str(ca), "cluster.etcd_cert": str(cert), "cluster.etcd_key": str(key),
        "cluster.etcd_user": "sip", "cluster.etcd_password": 'pa"ss\\word\n\t\x7f é',
        "cluster.node_id": "edge-1", "cluster.link_secret_dir": str(keys),
        "edge.listen": ["udp:[::1]:5060", "tcp:127.0.0.1:5070"], "edge.advertise": "[2001:db8::1]:5060",
        "edge.rate_limit": 0.1, "worker.t1": 0.3, "worker.trusted": [], "worker.domains": ["a.example"],
        "worker.nonce_secret": "0123456789abcdef-secret", "http.listen": "", "log.format": "text",
    })
    text = original.to_toml()
    assert load_config(write(tmp_path, text), env=NO_ENV) == original
    assert 'etcd_password = "pa\\"ss\\\\word\\u000a\\u0009\\u007f é"' in text


def test_to_toml_omits_unset_optionals():
    text = load_config(env=NO_ENV).to_toml()
    assert "etcd_ca" not in text and "advertise" not in text
    assert text.startswith("[cluster]\n") and text.endswith("\n")


def test_digest_defaults_offer_md5_first_and_sha256_domains_must_be_local():
    assert WorkerConfig().digest_algorithms == ("MD5", "SHA-256")
    config = load_config(env={"SIPCLUSTER_WORKER_DOMAINS": "example.com,b.example",
                              "SIPCLUSTER_WORKER_DIGEST_SHA256_DOMAINS": "b.example"})
    assert config.worker.digest_sha256_domains == ("b.example",)
    with pytest.raises(ConfigError) as info:
        load_config(env={"SIPCLUSTER_WORKER_DIGEST_SHA256_DOMAINS": "other.example"})
    assert info.value.field == "worker.digest_sha256_domains[0]"
