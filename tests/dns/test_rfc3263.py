"""RFC 3263 §4 and RFC 2782 on records in hand: ``locate`` asks its queries
and is answered from a table; no network, a seeded RNG."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from cluster.dns.records import Answer, Naptr, Query, Srv
from cluster.dns.rfc3263 import Destination, Limits, Target, locate, run, srv_order

ALL = ("UDP", "TCP", "TLS")


def answers(**records) -> dict[Query, Answer]:
    """``answers(NAPTR_example_com=[...])``-style table built by the tests below."""
    table = {}
    for key, values in records.items():
        rdtype, _, name = key.partition(" ")
        table[Query(name, rdtype)] = Answer(tuple(values), 300.0)
    return table


def asked(target: Target, table: dict[Query, Answer], supported=ALL, seed: int = 1):
    queries: list[Query] = []
    procedure = locate(target, supported, random.Random(seed))

    class Recording(dict):
        def get(self, query, default=None):
            queries.append(query)
            return table.get(query, default)
    return run(procedure, Recording()), queries


EXAMPLE = {
    "NAPTR example.com": [
        Naptr(50, 50, "s", "SIPS+D2T", "_sips._tcp.example.com."),
        Naptr(90, 50, "s", "SIP+D2T", "_sip._tcp.example.com."),
        Naptr(100, 50, "s", "SIP+D2U", "_sip._udp.example.com."),
    ],
    "SRV _sips._tcp.example.com": [Srv(0, 0, 5061, "tls.example.com.")],
    "SRV _sip._tcp.example.com": [Srv(0, 0, 5060, "tcp.example.com.")],
    "SRV _sip._udp.example.com": [Srv(0, 0, 5060, "udp.example.com.")],
    "A tls.example.com": ["192.0.2.1"], "A tcp.example.com": ["192.0.2.2"],
    "A udp.example.com": ["192.0.2.3"], "AAAA udp.example.com": ["2001:db8::3"],
}


def test_naptr_order_gives_the_transports_in_turn():
    location, queries = asked(Target("example.com"), answers(**EXAMPLE))
    assert queries[0] == Query("example.com", "NAPTR")
    assert location.destinations == (
        Destination("TLS", "192.0.2.1", 5061), Destination("TCP", "192.0.2.2", 5060),
        Destination("UDP", "192.0.2.3", 5060), Destination("UDP", "2001:db8::3", 5060))


def test_naptr_of_unsupported_transports_are_skipped():
    location, _ = asked(Target("example.com"), answers(**EXAMPLE), supported=("UDP",))
    assert [d.transport for d in location.destinations] == ["UDP", "UDP"]


def test_a_sips_uri_discards_the_non_sips_records():
    location, _ = asked(Target("example.com", secure=True), answers(**EXAMPLE))
    assert location.destinations == (Destination("TLS", "192.0.2.1", 5061),)


def test_sips_with_only_sip_naptr_falls_back_to_sips_srv_then_a_with_tls():
    table = answers(**{"NAPTR example.com": [Naptr(1, 1, "s", "SIP+D2U", "_sip._udp.example.com")],
                       "A example.com": ["192.0.2.9"]})
    location, queries = asked(Target("example.com", secure=True), table)
    assert Query("_sips._tcp.example.com", "SRV") in queries
    assert Query("_sip._udp.example.com", "SRV") not in queries
    assert location.destinations == (Destination("TLS", "192.0.2.9", 5061),)


def test_without_naptr_srv_is_asked_for_each_supported_transport():
    table = answers(**{"SRV _sip._tcp.example.com": [Srv(1, 0, 5070, "tcp.example.com")],
                       "A tcp.example.com": ["192.0.2.2"]})
    location, queries = asked(Target("example.com"), table, supported=("UDP", "TCP"))
    assert [q for q in queries if q.rdtype == "SRV"] == [
        Query("_sip._udp.example.com", "SRV"), Query("_sip._tcp.example.com", "SRV")]
    assert location.destinations == (Destination("TCP", "192.0.2.2", 5070),)


def test_without_srv_a_and_aaaa_at_the_default_port():
    table = answers(**{"A example.com": ["192.0.2.5"], "AAAA example.com": ["2001:db8::5"]})
    location, _ = asked(Target("example.com"), table)
    assert location.destinations == (Destination("UDP", "192.0.2.5", 5060),
                                      Destination("UDP", "2001:db8::5", 5060))


def test_an_explicit_port_or_transport_skips_naptr():
    table = answers(**EXAMPLE, **{"A example.com": ["192.0.2.5"]})
    location, queries = asked(Target("example.com", port=5088), table)
    assert [q.rdtype for q in queries] == ["A", "AAAA"]
    assert location.destinations == (Destination("UDP", "192.0.2.5", 5088),)
    location, queries = asked(Target("example.com", transport="TCP"), table)
    assert queries[0] == Query("_sip._tcp.example.com", "SRV")
    assert location.destinations == (Destination("TCP", "192.0.2.2", 5060),)


def test_a_numeric_host_needs_no_lookup():
    location, queries = asked(Target("192.0.2.7"), {})
    assert queries == [] and location.destinations == (Destination("UDP", "192.0.2.7", 5060),)


def test_nothing_found_is_negative_and_a_failure_is_failed():
    location, _ = asked(Target("nowhere.test"), {})
    assert location.destinations == () and location.error == "nxdomain" and not location.failed
    table = {Query("slow.test", "NAPTR"): Answer((), 0, "timeout")}
    location, _ = asked(Target("slow.test"), table)
    assert location.failed and "timeout" in location.detail


def test_a_failure_does_not_hide_records_found_elsewhere():
    table = answers(**{"A example.com": ["192.0.2.5"]})
    table[Query("example.com", "NAPTR")] = Answer((), 0, "servfail")
    location, _ = asked(Target("example.com"), table)
    assert location.destinations == (Destination("UDP", "192.0.2.5", 5060),)


def test_srv_dot_target_means_no_service():
    table = answers(**{"SRV _sip._udp.example.com": [Srv(0, 0, 0, ".")],
                       "A example.com": ["192.0.2.5"]})
    location, _ = asked(Target("example.com"), table, supported=("UDP",))
    assert location.destinations == () and not location.failed


def test_srv_priority_first_then_weight():
    records = [Srv(20, 0, 1, "c"), Srv(10, 60, 1, "a"), Srv(10, 40, 1, "b")]
    firsts = Counter(srv_order(records, random.Random(seed))[0].target for seed in range(2000))
    assert set(firsts) == {"a", "b"}, "priority 20 is never first"
    assert abs(firsts["a"] / 2000 - 0.6) < 0.05
    assert all(srv_order(records, random.Random(s))[-1].target == "c" for s in range(50))


def test_weight_zero_is_picked_rarely_but_can_be():
    records = [Srv(1, 0, 1, "zero"), Srv(1, 100, 1, "heavy")]
    firsts = Counter(srv_order(records, random.Random(seed))[0].target for seed in range(2000))
    assert 0 < firsts["zero"] < 60


def test_thousands_of_srv_records_stay_within_the_lookup_budget():
    srvs = [Srv(1, 1, 5060 + i % 1000, f"h{i}.example.com") for i in range(5000)]
    table = answers(**{"SRV _sip._udp.example.com": srvs})
    for i in range(5000):
        table[Query(f"h{i}.example.com", "A")] = Answer((f"10.0.{i // 250}.{i % 250}",), 60)
    limits = Limits()
    location, queries = asked(Target("example.com"), table, supported=("UDP",))
    assert len(queries) <= limits.max_queries
    assert 0 < len(location.destinations) <= limits.max_destinations
    assert location.truncated > 0


@pytest.mark.parametrize("service", ["SIP+D2W", "SIPS+D2W"])
def test_websocket_naptr_maps_to_ws_transports(service):
    table = answers(**{"NAPTR example.com": [Naptr(1, 1, "s", service, "_x.example.com")],
                       "SRV _x.example.com": [Srv(0, 0, 8080, "ws.example.com")],
                       "A ws.example.com": ["192.0.2.8"]})
    location, _ = asked(Target("example.com"), table, supported=("WS", "WSS"))
    assert location.destinations[0].transport == ("WS" if service == "SIP+D2W" else "WSS")


def test_naptr_and_srv_pointing_back_at_themselves_end():
    """A NAPTR whose replacement is the domain itself and SRV records whose
    target is their own name: no lookup is followed twice, and the location
    ends negative within the budget."""
    table = answers(**{
        "NAPTR loop.test": [Naptr(1, 1, "s", "SIP+D2U", "loop.test")],
        "SRV loop.test": [Srv(0, 1, 5060, "loop.test"), Srv(0, 1, 5060, "_sip._udp.loop.test")],
    })
    location, queries = asked(Target("loop.test"), table)
    assert len(queries) <= Limits().max_queries
    assert location.destinations == () and not location.failed
    assert queries.count(Query("loop.test", "NAPTR")) == 1
