"""LocationCache: watch-fed lookups, its staleness bound, and recovery paths."""

from __future__ import annotations

import itertools
import threading
import time

import trio

from cluster.registrar import Binding
from cluster.registrar.cache import STALENESS_BOUND, LocationCache
from cluster.registrar.etcd_store import EtcdLocationStore

_prefixes = itertools.count()
# What the tests demand of a healthy watch on loopback; the documented
# typical figure is a few milliseconds.
PROPAGATION_LIMIT = 0.5


def binding(aor: str, contact: str, expires_at: float, **kw) -> Binding:
    return Binding(aor=aor, contact=contact, expires_at=expires_at, call_id=kw.pop("call_id", "c"),
                   cseq=kw.pop("cseq", 1), **kw)


def run_with_cache(etcd_server, body, **cache_options):
    """``body(store, cache)``: a store and a cache on two separate clients."""
    prefix = f"test-cache-{next(_prefixes)}"

    async def main():
        store = EtcdLocationStore(lambda: etcd_server.client(), prefix=prefix)
        cache = LocationCache(lambda: etcd_server.client(), prefix=prefix, **cache_options)
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            await nursery.start(cache.run)
            try:
                return await body(store, cache)
            finally:
                nursery.cancel_scope.cancel()

    return trio.run(main)


def test_apply_on_one_store_is_seen_by_another_cache_within_the_bound(etcd_server):
    aor = "sip:dave@example.com"

    async def body(store, cache):
        now = time.time()
        lags = []
        for i in range(20):
            start = time.perf_counter()
            revision = await store.apply(aor, [binding(aor, f"sip:d{i}@10.0.0.{i}", now + 600)], [], expect=None)
            with trio.fail_after(STALENESS_BOUND):
                await cache.wait_for_revision(revision)
            lags.append(time.perf_counter() - start)
        seen = cache.lookup(aor, now)
        state = await store.read(aor)
        revision = await store.apply(aor, [], [b.binding_id for b in seen[:15]], expect=state.version)
        with trio.fail_after(STALENESS_BOUND):
            await cache.wait_for_revision(revision)
        return lags, len(seen), cache.lookup(aor, now), cache.counters

    lags, seen, after_delete, counters = run_with_cache(etcd_server, body)
    assert seen == 20 and len(after_delete) == 5
    # apply() returning includes the commit; the rest is watch propagation.
    assert max(lags) < PROPAGATION_LIMIT <= STALENESS_BOUND
    assert counters.resyncs == 1 and counters.events == 35


def test_initial_load_and_lookup_order_and_expiry(etcd_server):
    aor = "sip:erin@example.com"

    async def body(store, cache):
        now = time.time()
        revision = await store.apply(aor, [
            binding(aor, "sip:low@10.0.0.1", now + 600, q=0.1),
            binding(aor, "sip:none-old@10.0.0.2", now + 600, registered_at=now - 50),
            binding(aor, "sip:none-new@10.0.0.3", now + 600, registered_at=now - 5),
            binding(aor, "sip:high@10.0.0.4", now + 600, q=0.9),
            binding(aor, "sip:gone@10.0.0.5", now + 61, q=1.0, registered_at=now),
        ], [], expect=None)
        # A second cache started after the write gets it from the full read.
        late = LocationCache(lambda: etcd_server.client(), prefix=cache.root.decode().split("/")[1])
        async with trio.open_nursery() as nursery:
            await nursery.start(late.run)
            loaded = late.revision >= revision
            order_now = [b.contact for b in late.lookup(aor, now)]
            order_later = [b.contact for b in late.lookup(aor, now + 120)]
            nursery.cancel_scope.cancel()
        return loaded, order_now, order_later, late.lookup("sip:nobody@example.com", now)

    loaded, order_now, order_later, nobody = run_with_cache(etcd_server, body)
    assert loaded
    assert order_now == ["sip:gone@10.0.0.5", "sip:none-new@10.0.0.3", "sip:none-old@10.0.0.2",
                         "sip:high@10.0.0.4", "sip:low@10.0.0.1"]
    assert order_later == order_now[1:]
    assert nobody == []


def test_rewatch_after_compaction_falls_back_to_a_full_read(etcd_server):
    aor = "sip:frank@example.com"
    client = etcd_server.client()

    async def body(store, cache):
        now = time.time()
        await store.apply(aor, [binding(aor, "sip:f@10.0.0.1", now + 600)], [], expect=None)
        revision = await store.apply(aor, [binding(aor, "sip:g@10.0.0.2", now + 600)], [], expect=None)
        await cache.wait_for_revision(revision)
        # Pretend the cache fell behind while etcd compacted its history:
        # resuming from revision 1 is impossible, only a full read helps.
        client.compact(revision)
        cache.revision = 1
        cache.rewatch()
        with trio.fail_after(STALENESS_BOUND):
            await cache.wait_for_revision(revision)
        return cache.counters, [b.contact for b in cache.lookup(aor, now)]

    counters, contacts = run_with_cache(etcd_server, body)
    assert (counters.compactions, counters.resyncs) == (1, 2)
    assert sorted(contacts) == ["sip:f@10.0.0.1", "sip:g@10.0.0.2"]


class _SilentStream:
    """A watch stream that delivers nothing and answers no progress request
    (a half-open connection)."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self.progress_requests = 0

    def responses(self):
        self.cancelled.wait()
        return iter(())

    def request_progress(self) -> None:
        self.progress_requests += 1

    def cancel(self) -> None:
        self.cancelled.set()


def test_silent_watch_is_detected_and_replayed_within_the_bound(etcd_server):
    aor = "sip:grace@example.com"
    silent = _SilentStream()

    async def body(store, cache):
        real_watch = cache._kv.watch
        calls = []

        def watch(prefix, start_revision):
            calls.append(start_revision)
            return silent if len(calls) == 1 else real_watch(prefix, start_revision)

        cache._kv.watch = watch
        cache.rewatch()  # drop the real stream; the next one is silent
        now = time.time()
        revision = await store.apply(aor, [binding(aor, "sip:g@10.0.0.1", now + 600)], [], expect=None)
        start = trio.current_time()
        with trio.fail_after(STALENESS_BOUND):
            await cache.wait_for_revision(revision)
        return trio.current_time() - start, calls, cache.counters, cache.lookup(aor, now)

    elapsed, calls, counters, found = run_with_cache(etcd_server, body, progress_interval=0.1,
                                                     progress_timeout=0.1, retry_interval=0.05)
    assert [b.contact for b in found] == ["sip:g@10.0.0.1"]
    assert silent.progress_requests >= 1 and silent.cancelled.is_set()
    assert counters.silent == 1 and counters.rewatches == 2 and counters.resyncs == 1
    # Both re-watches resumed from the same revision: nothing was skipped.
    assert calls[0] == calls[1] and len(calls) == 2
    assert 0.15 <= elapsed < 0.2 + 0.05 + PROPAGATION_LIMIT


def test_idle_watch_answers_progress_requests_and_is_not_declared_silent(etcd_server):
    client = etcd_server.client()

    async def body(store, cache):
        # Writes outside the prefix produce no event; only a progress
        # notification can move the cache's revision past them.
        for i in range(5):
            response = await trio.to_thread.run_sync(client.put, f"/elsewhere/{i}", b"x")
            revision = response.header.revision
            with trio.fail_after(1.0):
                await cache.wait_for_revision(revision)
        return cache.counters

    counters = run_with_cache(etcd_server, body, progress_interval=0.05, progress_timeout=0.05)
    assert (counters.silent, counters.rewatches, counters.events) == (0, 0, 0)


def test_unreadable_values_are_counted_and_ignored(etcd_server):
    client = etcd_server.client()
    aor = "sip:heidi@example.com"

    async def body(store, cache):
        now = time.time()
        first = await store.apply(aor, [binding(aor, "sip:h@10.0.0.1", now + 600)], [], expect=None)
        await cache.wait_for_revision(first)
        key = cache.root + aor.encode() + b"/garbage"
        response = await trio.to_thread.run_sync(lambda: client.put(key, b"\xc1 not msgpack"))
        await cache.wait_for_revision(response.header.revision)
        only_bad = "sip:ivan@example.com"
        response = await trio.to_thread.run_sync(
            lambda: client.put(cache.root + only_bad.encode() + b"/garbage", b"\xc1"))
        await cache.wait_for_revision(response.header.revision)
        assert only_bad in cache.aors()
        assert cache.lookup(only_bad, now) == [] and only_bad not in cache.aors()
        assert cache.counters.bad_records == 1
        cache.counters.bad_records = 0
        state = await store.read(aor)
        # The cache keeps values as stored and decodes them when first looked
        # up: the bad one is counted then, once, and dropped.
        unread = cache.counters.bad_records
        found = cache.lookup(aor, now)
        again = cache.lookup(aor, now)
        assert [b.contact for b in again] == [b.contact for b in found]
        return (unread, cache.counters.bad_records), store.counters.bad_records, found, state

    cache_bad, store_bad, found, state = run_with_cache(etcd_server, body)
    assert (cache_bad, store_bad) == ((0, 1), 1)
    assert [b.contact for b in found] == ["sip:h@10.0.0.1"]
    assert [b.contact for b in state.bindings] == ["sip:h@10.0.0.1"] and len(state.version.keys) == 2
