"""The worker's resolver (``nodes.worker.resolver``) against a real dnsmasq
on a loopback port, and against broken servers (``tests.support.dns``):
RFC 3263 order and transports, RFC 2782 weights, A/AAAA fallback, sips:
filtering, TTLs, and every failure ending in a documented outcome within
the configured lifetime."""

from __future__ import annotations

from collections import Counter

import pytest
import trio

from cluster.config import DnsConfig
from cluster.dns.rfc3263 import Destination, Target
from cluster.proxy.failover import DNS_FAILED, UNRESOLVABLE, location_failure
from nodes.worker.resolver import MAX_RECORDS, Resolver
from tests.support.dns import Dnsmasq, FakeDns

RECORDS = [
    "local-ttl=60",
    # NAPTR order: TCP (order 10) before UDP (order 20); a SIPS record for sips:.
    "naptr-record=carrier.test,20,10,s,SIP+D2U,,_sip._udp.carrier.test",
    "naptr-record=carrier.test,10,10,s,SIP+D2T,,_sip._tcp.carrier.test",
    "naptr-record=carrier.test,30,10,s,SIPS+D2T,,_sips._tcp.carrier.test",
    "srv-host=_sip._udp.carrier.test,uas1.carrier.test,5071,0,75",
    "srv-host=_sip._udp.carrier.test,uas2.carrier.test,5072,0,25",
    "srv-host=_sip._tcp.carrier.test,uas1.carrier.test,5081,0,10",
    "srv-host=_sips._tcp.carrier.test,uas1.carrier.test,5091,0,10",
    "host-record=uas1.carrier.test,127.0.0.1",
    "host-record=uas2.carrier.test,127.0.0.2,::1",
    # No NAPTR: SRV per transport.
    "srv-host=_sip._udp.srvonly.test,uas2.carrier.test,6000,0,1",
    # Neither NAPTR nor SRV: A and AAAA.
    "host-record=plain.test,127.0.0.3,::3",
    # A short TTL, for expiry.
    "host-record=short.test,127.0.0.4,1",
]


@pytest.fixture(scope="module")
def dnsmasq():
    server = Dnsmasq(RECORDS).start()
    yield server
    server.close()


def config(*servers: str, **fields) -> DnsConfig:
    fields.setdefault("timeout", 0.5)
    fields.setdefault("lifetime", 1.5)
    return DnsConfig(servers=servers, **fields)


def locate(resolver: Resolver, target: Target, seed: int = 1):
    async def main():
        return await resolver.locate(target, seed)
    return trio.run(main)


def test_naptr_order_and_srv_then_a_and_aaaa(dnsmasq):
    resolver = Resolver(config(dnsmasq.server), supported=("UDP", "TCP", "TLS"))
    location = locate(resolver, Target("carrier.test"))
    assert location.destinations[0] == Destination("TCP", "127.0.0.1", 5081), "NAPTR order 10 first"
    assert {d.transport for d in location.destinations[1:4]} == {"UDP"}
    assert Destination("UDP", "::1", 5072) in location.destinations, "AAAA of an SRV target"
    assert location.destinations[-1] == Destination("TLS", "127.0.0.1", 5091)


def test_unsupported_naptr_transports_are_skipped(dnsmasq):
    location = locate(Resolver(config(dnsmasq.server), supported=("UDP",)), Target("carrier.test"))
    assert {d.transport for d in location.destinations} == {"UDP"}


def test_sips_keeps_only_the_sips_records(dnsmasq):
    resolver = Resolver(config(dnsmasq.server), supported=("UDP", "TCP", "TLS"))
    location = locate(resolver, Target("carrier.test", secure=True))
    assert location.destinations == (Destination("TLS", "127.0.0.1", 5091),)


def test_srv_without_naptr_and_a_aaaa_without_srv(dnsmasq):
    resolver = Resolver(config(dnsmasq.server))
    assert locate(resolver, Target("srvonly.test")).destinations[0] == Destination("UDP", "127.0.0.2", 6000)
    assert locate(resolver, Target("plain.test")).destinations == (
        Destination("UDP", "127.0.0.3", 5060), Destination("UDP", "::3", 5060))


def test_srv_weights_hold_within_five_percent_over_2000_selections(dnsmasq):
    resolver = Resolver(config(dnsmasq.server), supported=("UDP",))

    async def main():
        firsts: Counter[int] = Counter()
        for seed in range(2000):
            location = await resolver.locate(Target("carrier.test"), seed)
            firsts[location.destinations[0].port] += 1
        return firsts
    firsts = trio.run(main)
    assert abs(firsts[5071] / 2000 - 0.75) <= 0.05 and abs(firsts[5072] / 2000 - 0.25) <= 0.05
    assert resolver.stats["dns_queries"] < 10, "the cache answered the rest"


def test_an_answer_is_reused_within_its_ttl_and_asked_again_after(dnsmasq):
    resolver = Resolver(config(dnsmasq.server))

    async def main():
        await resolver.locate(Target("short.test", port=5060), 1)
        asked = resolver.stats["dns_queries"]
        await resolver.locate(Target("short.test", port=5060), 1)
        assert resolver.stats["dns_queries"] == asked, "within the 1 s TTL: cached"
        await trio.sleep(1.2)
        await resolver.locate(Target("short.test", port=5060), 1)
        return asked
    asked = trio.run(main)
    assert resolver.stats["dns_queries"] > asked
    assert resolver.stats["dns_cache_expired"] >= 1


def test_nxdomain_is_480_and_cached_for_the_negative_ttl(dnsmasq):
    resolver = Resolver(config(dnsmasq.server, negative_ttl=30.0))

    async def main():
        location = await resolver.locate(Target("nobody.carrier.test"), 1)
        asked = resolver.stats["dns_queries"]
        await resolver.locate(Target("nobody.carrier.test"), 1)
        return location, asked
    location, asked = trio.run(main)
    assert location.destinations == () and location.error == "nxdomain" and not location.failed
    assert location_failure(location, "nobody.carrier.test")[0] == UNRESOLVABLE
    assert resolver.stats["dns_queries"] == asked, "the negative answer was cached"


def test_a_refused_zone_is_a_dns_failure(dnsmasq):
    location = locate(Resolver(config(dnsmasq.server)), Target("elsewhere.example"))
    assert location.failed and location.error == "refused"
    assert location_failure(location, "elsewhere.example")[0] == DNS_FAILED


@pytest.mark.parametrize("mode, error", [
    ("silent", "timeout"), ("servfail", "servfail"), ("garbage", None), ("cname-loop", None),
    ("refused", "refused"),
])
def test_a_broken_server_ends_in_a_dns_failure_within_the_lifetime(mode, error):
    fake = FakeDns(mode).start()
    try:
        resolver = Resolver(config(fake.server, timeout=0.3, lifetime=0.6))

        async def main():
            start = trio.current_time()
            location = await resolver.locate(Target("carrier.test"), 1)
            return location, trio.current_time() - start
        location, took = trio.run(main)
    finally:
        fake.close()
    assert location.destinations == () and location.failed
    if error is not None:
        assert location.error == error
    assert location_failure(location, "carrier.test")[0] == DNS_FAILED
    # The whole location (NAPTR, SRV, A, AAAA) is bounded by the lifetime,
    # plus a margin for a loaded machine.
    assert took < 0.6 + 1.5
    assert fake.queries >= 1
    assert sum(v for k, v in resolver.stats.items() if k.startswith("dns_lookup_")) >= 1


def test_thousands_of_records_are_cut_and_an_oversized_answer_is_a_failure():
    fake = FakeDns("many", records=1000).start()
    try:
        resolver = Resolver(config(fake.server, timeout=0.5, lifetime=1.0))
        location = locate(resolver, Target("carrier.test", port=5060))
        assert 0 < len(location.destinations) <= 16
        assert location.truncated > 0 and resolver.stats["dns_records_truncated"] > 0
        fake.records = 5000  # beyond 64 KiB: truncated, and no TCP to retry on
        location = locate(Resolver(config(fake.server, timeout=0.5, lifetime=1.0)),
                          Target("other.test", port=5060))
        assert location.failed and location.destinations == ()
    finally:
        fake.close()
    assert MAX_RECORDS < 1000


def test_the_event_loop_keeps_ticking_while_the_server_is_silent():
    fake = FakeDns("silent").start()
    try:
        resolver = Resolver(config(fake.server, timeout=0.5, lifetime=1.0))

        async def main():
            late = []

            async def ticker(stop: trio.Event):
                while not stop.is_set():
                    before = trio.current_time()
                    await trio.sleep(0.005)
                    late.append(trio.current_time() - before - 0.005)
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ticker, stop)
                async with trio.open_nursery() as lookups:
                    for i in range(50):
                        lookups.start_soon(resolver.locate, Target(f"h{i}.test"), i)
                stop.set()
            return late
        late = trio.run(main)
    finally:
        fake.close()
    assert len(late) > 50
    # Generous for a loaded 2-core machine; ops/bench/rfc3263.py measures it closely.
    assert sorted(late)[len(late) // 2] < 0.05


def test_etc_hosts_answers_addresses_with_the_system_configuration(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.9 gateway.lan gw # comment\n::9 gateway.lan\nbogus line\n")
    resolver = Resolver(DnsConfig(), hosts=hosts)
    location = locate(resolver, Target("gateway.lan", port=5070))
    assert location.destinations == (Destination("UDP", "127.0.0.9", 5070), Destination("UDP", "::9", 5070))
    assert resolver.stats["dns_queries"] == 0
