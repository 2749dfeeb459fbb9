"""The ``dns`` configuration section: servers from the environment, and
values that cannot work refused at start-up naming the field."""

from __future__ import annotations

import pytest

from cluster.config import ConfigError, load_config


def test_servers_come_from_the_environment():
    config = load_config(None, env={"SIPCLUSTER_DNS_SERVERS": "127.0.0.1:5353, [::1]"})
    assert config.dns.server_addresses() == (("127.0.0.1", 5353), ("::1", 53))
    assert load_config(None, env={}).dns.servers == (), "unset: the system's resolver configuration"
    assert load_config(None, env={}).dns.block_time == 60.0


@pytest.mark.parametrize("env, field", [
    ({"SIPCLUSTER_DNS_SERVERS": "dns.example.net:53"}, "dns.servers[0]"),
    ({"SIPCLUSTER_DNS_SERVERS": "127.0.0.1:0"}, "dns.servers[0]"),
    ({"SIPCLUSTER_DNS_TIMEOUT": "3", "SIPCLUSTER_DNS_LIFETIME": "2"}, "dns.lifetime"),
    ({"SIPCLUSTER_DNS_TIMEOUT": "0"}, "dns.timeout"),
    ({"SIPCLUSTER_DNS_CACHE_ENTRIES": "0"}, "dns.cache_entries"),
    ({"SIPCLUSTER_DNS_CACHE_BYTES": "100"}, "dns.cache_bytes"),
    ({"SIPCLUSTER_DNS_BLOCK_TIME": "-1"}, "dns.block_time"),
    ({"SIPCLUSTER_DNS_NEGATIVE_TTL": "-1"}, "dns.negative_ttl"),
])
def test_unusable_values_name_the_field(env, field):
    with pytest.raises(ConfigError) as raised:
        load_config(None, env=env)
    assert raised.value.field == field


def test_the_worker_takes_its_block_time_and_cache_bounds_from_the_section():
    from nodes.worker.node import WorkerNode
    config = load_config(None, env={"SIPCLUSTER_DNS_BLOCK_TIME": "7", "SIPCLUSTER_DNS_CACHE_ENTRIES": "5",
                                    "SIPCLUSTER_DNS_SERVERS": "127.0.0.1:5353"})
    from tests.tu.support import make_tu
    node = WorkerNode(config, services=make_tu(_app()).services)
    try:
        assert node.tu is not None and node.tu.blocklist.block_time == 7.0
        assert node.dns.resolver.cache.limits.entries == 5
        assert [(n.address, n.port) for n in node.dns.resolver.resolver.nameservers] == [("127.0.0.1", 5353)]
    finally:
        node.inbox.close()


def _app():
    from cluster.app.api import Application
    return Application("empty")


def test_the_chart_renders_the_dns_section_for_the_worker(tmp_path):
    from tests.helm.test_chart import load_pod_config, render_values
    rendered = render_values({"config": {"dns": {"servers": ["10.96.0.10:53"], "block_time": 30}}})
    worker = load_pod_config(rendered, "worker", tmp_path)
    assert worker.dns.server_addresses() == (("10.96.0.10", 53),)
    assert worker.dns.block_time == 30.0
    default = load_pod_config(render_values({}), "worker", tmp_path / "default")
    assert default.dns.servers == (), "the pod's resolv.conf unless set"
