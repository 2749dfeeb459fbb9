"""Bans through a real etcd: published under a lease, fed to every node's
table by a watch, listed and lifted by the CLI's directory; a ban list far
larger than a node's table is applied without stalling the event loop."""

from __future__ import annotations

import itertools
import json
import time
from collections import Counter

import trio

from cluster.coordination import EtcdStore
from cluster.coordination.connection import EtcdAccess
from cluster.defence import ADDRESS, USER, Ban, BanTable, ban_key, encode_ban
from cluster.defence.store import BanDirectory, BanFeed, BanPublisher
import trio.lowlevel

DEADLINE = 30.0
_prefixes = itertools.count()


def fresh_prefix() -> str:
    return f"/bans-test-{next(_prefixes)}-{time.monotonic_ns()}"


async def until(condition, timeout: float = DEADLINE) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.05)


def table_feed(store, prefix, table: BanTable, kinds=(ADDRESS,), stats=None) -> BanFeed:
    return BanFeed(store, prefix, kinds=kinds, put=lambda ban: table.add(ban.subject, ban.until, time.time()),
                   lifted=lambda kind, subject: table.remove(subject), reset=table.clear, stats=stats)


def test_published_ban_reaches_other_nodes_is_listed_and_lifted(etcd_server):
    prefix = fresh_prefix()
    directory = BanDirectory(EtcdAccess((etcd_server.endpoint,)), prefix)

    async def main():
        store = EtcdStore(etcd_server.endpoint)
        stats = Counter()
        publisher = BanPublisher(prefix, stats)
        edge_table, worker_table = BanTable(100), BanTable(100)
        async with trio.open_nursery() as nursery:
            await nursery.start(publisher.run, store)
            await nursery.start(table_feed(store, prefix, edge_table).run)
            await nursery.start(table_feed(store, prefix, worker_table, kinds=(USER,)).run)
            now = time.time()
            assert publisher.offer(Ban(ADDRESS, "192.0.2.66", now + 120, "rate", "edge-1", "too fast"))
            assert publisher.offer(Ban(USER, "alice@example.com", now + 120, "auth", "w1"))
            await until(lambda: "192.0.2.66" in edge_table and "alice@example.com" in worker_table)
            assert "alice@example.com" not in edge_table and "192.0.2.66" not in worker_table
            assert stats["ban_published"] == 2
            listed = await trio.to_thread.run_sync(directory.list)
            assert [(b.kind, b.subject, b.reason, b.by) for b in listed] == [
                (ADDRESS, "192.0.2.66", "rate", "edge-1"), (USER, "alice@example.com", "auth", "w1")]
            # Each key is under a lease of about the ban time.
            kv = await store.get(ban_key(prefix, ADDRESS, "192.0.2.66"))
            ttl = await trio.to_thread.run_sync(
                lambda: etcd_server.client().get_lease_info(kv.lease).TTL)
            assert 100 < ttl <= 121
            assert await trio.to_thread.run_sync(directory.delete, "192.0.2.66") == [ADDRESS]
            await until(lambda: "192.0.2.66" not in edge_table)
            assert await trio.to_thread.run_sync(directory.delete, "192.0.2.66") == []
            nursery.cancel_scope.cancel()
        store.close()

    try:
        trio.run(main)
    finally:
        directory.close()


def test_ban_ends_with_its_lease(etcd_server):
    prefix = fresh_prefix()

    async def main():
        store = EtcdStore(etcd_server.endpoint)
        table = BanTable(10)
        async with trio.open_nursery() as nursery:
            publisher = BanPublisher(prefix, Counter())
            await nursery.start(publisher.run, store)
            await nursery.start(table_feed(store, prefix, table).run)
            publisher.offer(Ban(ADDRESS, "192.0.2.9", time.time() + 2, "rate", "e"))
            await until(lambda: "192.0.2.9" in table)
            # etcd deletes the key when the lease expires, and the watch says so.
            await until(lambda: "192.0.2.9" not in table)
            assert (await store.get_prefix(f"{prefix}/bans/")).kvs == ()
            nursery.cancel_scope.cancel()
        store.close()

    trio.run(main)


def test_publisher_spends_a_bounded_number_of_writes():
    stats = Counter()

    async def main():
        publisher = BanPublisher("/x", stats, queue=64, rate=20.0)
        accepted = sum(publisher.offer(Ban(ADDRESS, f"10.0.0.{i}", time.time() + 60, "rate"))
                       for i in range(1000))
        assert accepted <= 21
        assert stats["ban_publish_dropped"] == 1000 - accepted

    trio.run(main)


TOTAL = 100_000


def test_a_huge_ban_list_fills_the_table_to_its_bound_without_stalling(etcd_server):
    prefix = fresh_prefix()
    client = etcd_server.client()
    until_ = time.time() + 300
    lease = client.lease(300)
    value = encode_ban(Ban(ADDRESS, "", until_, "rate", "elsewhere"))
    for start in range(0, TOTAL, 100):
        client.transaction(compare=[], success=[
            client.transactions.put(ban_key(prefix, ADDRESS, f"10.{i >> 16}.{i >> 8 & 255}.{i & 255}"),
                                    value, lease)
            for i in range(start, start + 100)], failure=[])
    client.put(ban_key(prefix, ADDRESS, "10.8.0.1"), b"not json", lease)
    client.put(f"{prefix}/bans/addr/", json.dumps({"until": until_}).encode(), lease)  # no subject

    async def main():
        store = EtcdStore(etcd_server.endpoint)
        table = BanTable(65536)
        stats = Counter()
        ticks = []

        async def ticker():
            while True:
                ticks.append(trio.current_time())
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            feed = table_feed(store, prefix, table, stats=stats)
            await nursery.start(feed.run)
            assert len(table) == 65536 and table.evicted == TOTAL - 65536
            assert stats["ban_bad_record"] == 1
            # The loop kept running while 100,000 keys were read and applied.
            gaps = [b - a for a, b in zip(ticks, ticks[1:])]
            assert len(ticks) > 5 and max(gaps) < 2.0
            nursery.cancel_scope.cancel()
        store.close()

    try:
        trio.run(main)
    finally:
        client.revoke_lease(lease.id)
        client.close()
