"""The DNS cache and the blocklist, sans-IO: TTLs (positive and negative),
entry and byte bounds, blocking for block_time."""

from __future__ import annotations

from collections import Counter

from cluster.dns.blocklist import Blocklist
from cluster.dns.cache import CacheLimits, DnsCache
from cluster.dns.records import Answer, Query, Srv

Q = Query("example.com", "A")


def test_an_answer_is_kept_for_its_ttl_only():
    events: Counter[str] = Counter()
    cache = DnsCache(count=lambda e: events.update([e]))
    cache.put(Q, Answer(("192.0.2.1",), 30.0), now=100.0)
    assert cache.get(Q, 129.9) is not None
    assert cache.get(Q, 130.0) is None and len(cache) == 0
    assert events["dns_cache_hit"] == 1 and events["dns_cache_expired"] == 1


def test_negative_answers_are_cached_and_failures_are_not():
    cache = DnsCache()
    cache.put(Q, Answer((), 10.0, "nxdomain"), now=0.0)
    assert cache.get(Q, 5.0).error == "nxdomain"
    other = Query("slow.example.com", "A")
    cache.put(other, Answer((), 10.0, "timeout"), now=0.0)
    assert cache.get(other, 1.0) is None


def test_the_cache_is_bounded_in_entries_and_bytes():
    cache = DnsCache(CacheLimits(entries=3, bytes=10_000))
    for i in range(5):
        cache.put(Query(f"h{i}", "A"), Answer(("192.0.2.1",), 60.0), now=0.0)
    assert len(cache) == 3 and cache.get(Query("h0", "A"), 1.0) is None
    big = Answer(tuple(Srv(1, 1, 5060, f"t{i}.example.com") for i in range(60)), 60.0)
    cache.put(Query("big", "SRV"), big, now=0.0)
    assert cache.bytes <= 10_000
    huge = Answer(tuple(Srv(1, 1, 5060, f"t{i}.example.com") for i in range(1000)), 60.0)
    cache.put(Query("huge", "SRV"), huge, now=0.0)
    assert cache.get(Query("huge", "SRV"), 1.0) is None, "larger than the whole cache: not kept"
    assert cache.bytes <= 10_000


def test_ttl_is_capped():
    cache = DnsCache(CacheLimits(max_ttl=100.0))
    cache.put(Q, Answer(("192.0.2.1",), 10_000_000.0), now=0.0)
    assert cache.get(Q, 100.5) is None


def test_a_blocked_destination_is_blocked_for_block_time():
    events: Counter[str] = Counter()
    blocks = Blocklist(60.0, limit=2, count=lambda e: events.update([e]))
    key = ("UDP", "192.0.2.1", 5060)
    blocks.block(key, 10.0)
    assert blocks.blocked(key, 69.9) and not blocks.blocked(key, 70.0)
    assert events["dns_destination_blocked"] == 1
    for port in range(5):
        blocks.block(("UDP", "192.0.2.1", port), 0.0)
    assert len(blocks) == 2, "bounded"
    assert not Blocklist(0.0).blocked(key, 0.0)
