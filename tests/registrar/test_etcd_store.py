"""EtcdLocationStore against a real etcd: conflicts, group commit, bucket leases, expiry."""

from __future__ import annotations

import functools
import itertools
import math
import time

import pytest
import trio

from cluster.registrar import Binding, StoreUnavailable, register
from cluster.registrar.etcd_kv import EtcdKV
from cluster.registrar.etcd_store import EtcdLocationStore, aor_prefix, location_prefix, split_key

from .samples import register_request, rfc4475

_prefixes = itertools.count()


def fresh_prefix() -> str:
    return f"test-etcd-store-{next(_prefixes)}"


def binding(aor: str, contact: str, expires_at: float, **kw) -> Binding:
    return Binding(aor=aor, contact=contact, expires_at=expires_at, call_id=kw.pop("call_id", "c"),
                   cseq=kw.pop("cseq", 1), **kw)


def run_stores(etcd_server, body, *, count: int = 1, **options):
    """``trio.run`` of ``body(*stores)`` with ``count`` stores, each on its own client."""
    return trio.run(functools.partial(_with_stores, etcd_server, body, count, options))


async def _with_stores(etcd_server, body, count, options):
    prefix = options.pop("prefix", None) or fresh_prefix()
    stores = [EtcdLocationStore(lambda: etcd_server.client(), prefix=prefix, **options) for _ in range(count)]
    async with trio.open_nursery() as nursery:
        for store in stores:
            await nursery.start(store.run)
        try:
            return await body(*stores)
        finally:
            nursery.cancel_scope.cancel()


def test_keys_escape_slashes_and_percent():
    root = location_prefix("/a/b/")
    assert root == b"/a/b/location/"
    key = aor_prefix(root, "sip:we/ird%2F@example.com") + b"0123abcd"
    assert key == b"/a/b/location/sip:we%2Fird%252F@example.com/0123abcd"
    assert split_key(root, key) == ("sip:we/ird%2F@example.com", "0123abcd")


def test_register_round_trip_and_all_aors(etcd_server):
    now = time.time()

    async def body(store):
        results = [await register(store, rfc4475(name), now=now) for name in ("cparam01", "cparam02", "regescrt")]
        watson = await store.bindings("sip:watson@example.com", now=now)
        user = await store.bindings("sip:user@example.com", now=now)
        return results, watson, user, await store.all_aors()

    results, watson, user, aors = run_stores(etcd_server, body)
    assert [r.status for r in results] == [200, 200, 200]
    # cparam01 and cparam02 are distinct bindings: the URI parameter differs.
    assert sorted(b.contact for b in watson) == ["sip:+19725552222@gw1.example.net",
                                                 "sip:+19725552222@gw1.example.net;unknownparam"]
    assert [b.contact for b in user] == ["sip:user@example.com?Route=%3Csip:sip.example.com%3E"]
    assert aors == ["sip:user@example.com", "sip:watson@example.com"]


def test_stale_version_is_a_conflict_for_puts_and_deletes(etcd_server):
    now = time.time()
    aor = "sip:carol@example.com"

    async def body(store):
        a, b = binding(aor, "sip:a@10.0.0.1", now + 600), binding(aor, "sip:b@10.0.0.2", now + 600)
        assert await store.apply(aor, [a, b], [], expect=(await store.read(aor)).version) is not None
        seen = await store.read(aor)
        # Someone else adds a binding: our version is stale.
        c = binding(aor, "sip:c@10.0.0.3", now + 600)
        assert await store.apply(aor, [c], [], expect=seen.version) is not None
        put_conflict = await store.apply(aor, [binding(aor, "sip:d@10.0.0.4", now + 600)], [],
                                         expect=seen.version)
        seen = await store.read(aor)
        # Someone else deletes a binding we saw.
        assert await store.apply(aor, [], [a.binding_id], expect=seen.version) is not None
        delete_conflict = await store.apply(aor, [], [b.binding_id], expect=seen.version)
        left = await store.bindings(aor, now=now)
        return put_conflict, delete_conflict, left, store.counters.conflicts

    put_conflict, delete_conflict, left, conflicts = run_stores(etcd_server, body)
    assert (put_conflict, delete_conflict, conflicts) == (None, None, 2)
    assert sorted(b.contact for b in left) == ["sip:b@10.0.0.2", "sip:c@10.0.0.3"]


def test_two_stores_registering_one_aor_concurrently_lose_nothing(etcd_server):
    now = time.time()

    async def body(store_a, store_b):
        statuses = []

        async def shard(store, name):
            for i in range(50):
                request = register_request([f"<sip:{name}{i}@10.1.0.{i}>"], call_id=f"{name}{i}", cseq=1)
                result = await register(store, request, now=now, attempts=100)
                statuses.append(result.status)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(shard, store_a, "a")
            nursery.start_soon(shard, store_b, "b")
        return statuses, await store_a.bindings("sip:alice@example.com", now=now)

    statuses, bindings = run_stores(etcd_server, body, count=2)
    assert statuses == [200] * 100
    assert len(bindings) == 100
    assert {b.contact for b in bindings} == {f"sip:{n}{i}@10.1.0.{i}" for n in "ab" for i in range(50)}


def test_group_commit_batches_a_thousand_applies(etcd_server):
    now = time.time()

    async def body(store):
        revisions = []

        async def one(i):
            aor = f"sip:user{i}@example.com"
            revisions.append(await store.apply(aor, [binding(aor, f"sip:u{i}@10.2.{i // 250}.{i % 250}", now + 600)],
                                               [], expect=None))

        async with trio.open_nursery() as nursery:
            for i in range(1000):
                nursery.start_soon(one, i)
        return revisions, store.counters, len(await store.all_aors())

    revisions, counters, aors = run_stores(etcd_server, body)
    assert None not in revisions and aors == 1000
    assert (counters.applies, counters.ops) == (1000, 1000)
    assert counters.commits <= 100
    assert len(set(revisions)) == counters.commits


def test_batch_size_one_commits_each_apply(etcd_server):
    now = time.time()

    async def body(store):
        async with trio.open_nursery() as nursery:
            for i in range(20):
                aor = f"sip:solo{i}@example.com"
                nursery.start_soon(lambda aor=aor: store.apply(aor, [binding(aor, "sip:x@10.0.0.1", now + 600)],
                                                               [], expect=None))
        return store.counters

    counters = run_stores(etcd_server, body, max_batch=1)
    assert (counters.commits, counters.read_txns) == (20, 0)


def test_bindings_share_one_lease_per_expiry_bucket(etcd_server):
    now = time.time()
    bucket = 30.0
    expiries = [now + 60 + 17 * i for i in range(200)]  # 60 s .. 3443 s: ~113 buckets
    buckets = {math.ceil(t / bucket) for t in expiries}

    async def body(store):
        for i, expires_at in enumerate(expiries):
            aor = f"sip:lease{i}@example.com"
            await store.apply(aor, [binding(aor, "sip:x@10.0.0.1", expires_at)], [], expect=None)
        return store.lease_ids(), store.counters.leases_granted, store.root

    leases, granted, root = run_stores(etcd_server, body, bucket=bucket, max_delay=0.0)
    assert granted == len(leases) == len(buckets) < len(expiries)
    client = etcd_server.client()
    used = {meta.lease_id for _, meta in client.get_prefix(root.decode())}
    assert used == set(leases.values())
    for end, lease in leases.items():
        ttl = client.get_lease_info(lease).TTL
        # Each lease lives to its bucket's end plus the margin, never much longer.
        assert end + 5 - now - 3 <= ttl <= end + 5 - now + 1


def test_expired_binding_leaves_etcd_through_its_lease(etcd_server):
    client = etcd_server.client()
    aor = "sip:brief@example.com"

    def wait_for_delete(key: bytes, revision: int):
        # etcd's own delete event, replayed if it happened already.
        stream = EtcdKV(client).watch(key, revision + 1)
        try:
            for response in stream.responses():
                for event in response.events:
                    if event.type == 1:  # DELETE
                        return event.kv.key, event.kv.mod_revision
        finally:
            stream.cancel()

    async def body(store):
        now = time.time()
        b = binding(aor, "sip:brief@10.0.0.1", now + 1.0)
        revision = await store.apply(aor, [b], [], expect=None)
        key = aor_prefix(store.root, aor) + b.binding_id.encode()
        assert client.get(key)[0] is not None
        with trio.fail_after(10):
            deleted, at = await trio.to_thread.run_sync(wait_for_delete, key, revision, abandon_on_cancel=True)
        gone_after = time.time() - now
        return deleted == key, at > revision, client.get(key), await store.bindings(aor, now=time.time()), gone_after

    same_key, later, value, left, gone_after = run_stores(etcd_server, body, bucket=1.0, lease_margin=0.0)
    assert same_key and later
    assert value == (None, None) and left == []
    # Bucket end (<= 2 s away) plus etcd's lease-expiry check interval.
    assert gone_after < 4.0


def test_oversized_write_fails_alone_and_the_store_keeps_working(etcd_server):
    now = time.time()
    aor = "sip:huge@example.com"

    async def body(store):
        # 200 puts in one AOR exceed etcd's --max-txn-ops: refused, reported.
        too_many = [binding(aor, f"sip:h{i}@10.3.0.{i}", now + 600) for i in range(200)]
        with pytest.raises(StoreUnavailable, match="too many operations"):
            await store.apply(aor, too_many, [], expect=None)
        ok = await store.apply(aor, too_many[:100], [], expect=None)
        state = await store.read(aor)
        # More bindings than existence compares: still writable.
        again = await store.apply(aor, too_many[100:110], [], expect=state.version)
        return ok, again, len(await store.bindings(aor, now=now))

    ok, again, count = run_stores(etcd_server, body)
    assert ok is not None and again is not None and count == 110


def test_endpoint_urls_connect(etcd_server):
    async def body():
        store = EtcdLocationStore([etcd_server.endpoint], prefix=fresh_prefix())
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            revision = await store.apply("sip:url@example.com",
                                         [binding("sip:url@example.com", "sip:u@10.0.0.1", time.time() + 60)],
                                         [], expect=None)
            nursery.cancel_scope.cancel()
        store.close()
        return revision

    assert trio.run(body) > 0


def test_apply_needs_run(etcd_server):
    store = EtcdLocationStore(lambda: etcd_server.client(), prefix=fresh_prefix())
    with pytest.raises(RuntimeError):
        trio.run(lambda: store.apply("sip:a@b", [], [], expect=None))
