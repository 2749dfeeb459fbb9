"""EtcdMembership and EtcdStore against a real etcd (DESIGN §4).

Every test runs its own ``trio.run`` against the module's etcd (the
``etcd_server`` fixture in tests/conftest.py) under its own key prefix, and
waits for conditions under deadlines instead of sleeping. Short leases
(2 s, the smallest the config allows) keep the expiry tests quick.
"""

from __future__ import annotations

import itertools
import logging
from contextlib import asynccontextmanager

import pytest
import trio

from cluster.config import ClusterConfig, Config
from cluster.coordination import CoordinationError, EtcdMembership, EtcdStore
from cluster.sharding import EDGE, WORKER, Member, member_key
from tests.support.etcd import free_port

TTL = 2
# Generous: a loaded CI machine can be slow to elect, expire or reconnect.
DEADLINE = 30

_prefixes = itertools.count()


def fresh_prefix() -> str:
    return f"/sipcluster-test-{next(_prefixes)}"


def member(node_id: str, role: str = WORKER) -> Member:
    return Member(id=node_id, role=role, link=f"tcp://127.0.0.1:{5700 + len(node_id)}",
                  http="http://127.0.0.1:8080/status", pid=4242, host="test")


def node(server, prefix: str, record: Member | None, *, store: EtcdStore | None = None,
         **options) -> EtcdMembership:
    options.setdefault("ttl", TTL)
    return EtcdMembership(store or EtcdStore(server.endpoint), prefix, record,
                          owns_store=True, **options)


async def until(condition, timeout: float = DEADLINE) -> None:
    """Wait until ``condition()`` holds; fail after ``timeout`` seconds."""
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.01)


def sees(observer: EtcdMembership, *nodes: EtcdMembership) -> bool:
    return all(n.key in observer.view.members for n in nodes)


class GatedStore(EtcdStore):
    """An EtcdStore whose new watches can be held back or made silent.

    ``gate`` (a trio.Event) holds the next watch until set, so the test can
    write while the node has no watch; ``mute`` hands out watches that never
    deliver anything, like a stream that died without telling anyone.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gate: trio.Event | None = None
        self.held = trio.Event()
        self.mute = False
        self.watches = 0
        self.reads = 0

    async def get_prefix(self, prefix):
        self.reads += 1
        return await super().get_prefix(prefix)

    @asynccontextmanager
    async def watch_prefix(self, prefix, *, start_revision=0):
        if self.gate is not None:
            self.held.set()
            await self.gate.wait()
        self.watches += 1
        if self.mute:
            yield _SilentStream()
            return
        async with super().watch_prefix(prefix, start_revision=start_revision) as stream:
            yield stream


class _SilentStream:
    def cancel(self) -> None:
        pass

    def __aiter__(self):
        return self

    async def __anext__(self):
        await trio.sleep_forever()


# -- membership ------------------------------------------------------------------

def test_workers_and_edge_see_each_other_and_build_identical_rings(etcd_server):
    prefix = fresh_prefix()

    async def main():
        nodes = [node(etcd_server, prefix, member("w1")), node(etcd_server, prefix, member("w2")),
                 node(etcd_server, prefix, member("e1", EDGE))]
        async with trio.open_nursery() as nursery:
            for n in nodes:
                await nursery.start(n.run)
            # Started means registered and holding a first view with ourselves.
            assert all(n.key in n.view.members for n in nodes)
            await until(lambda: all(sees(n, *nodes) for n in nodes)
                        and len({n.view.revision for n in nodes}) == 1)
            rings = [n.view.ring() for n in nodes]
            assert rings[0] == rings[1] == rings[2]
            assert rings[0].members == ("w1", "w2")
            assert rings[0].epoch == nodes[0].view.revision > 0
            assert [m.id for m in nodes[1].view.edges()] == ["e1"]
            assert nodes[2].view.worker("w2") == member("w2")
            assert all(n.ready for n in nodes)
            # One Call-ID, one owner, on every node.
            assert len({ring.owner(b"a84b4c76e66710@pc33.atlanta.com") for ring in rings}) == 1
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_views_iterates_each_change_and_observer_needs_no_key(etcd_server):
    prefix = fresh_prefix()

    async def main():
        observer = node(etcd_server, prefix, None)
        w1 = node(etcd_server, prefix, member("w1"))
        async with trio.open_nursery() as nursery:
            await nursery.start(observer.run)
            assert observer.ready and observer.view.members == {}
            seen = []
            done = trio.Event()

            async def follow():
                async for view in observer.views():
                    seen.append(view)
                    if w1.key in view.members:
                        done.set()
                        return

            nursery.start_soon(follow)
            await nursery.start(w1.run)
            with trio.fail_after(DEADLINE):
                await done.wait()
            assert seen[0].members == {} and w1.key in seen[-1].members
            assert seen[-1] is observer.view
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_member_cancelled_without_leave_expires_within_ttl(etcd_server):
    prefix = fresh_prefix()

    async def main():
        w1, w2 = node(etcd_server, prefix, member("w1")), node(etcd_server, prefix, member("w2"))
        async with trio.open_nursery() as nursery:
            await nursery.start(w1.run)
            async with trio.open_nursery() as crashed:
                await crashed.start(w2.run)
                await until(lambda: sees(w1, w2))
                crashed.cancel_scope.cancel()
            # No leave(): only the lease's expiry can remove the key.
            await until(lambda: not sees(w1, w2), timeout=TTL + 2)
            assert w1.view.ring().members == ("w1",)
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_leave_removes_the_member_at_once(etcd_server):
    prefix = fresh_prefix()
    long_ttl = 30  # expiry cannot explain a removal within seconds

    async def main():
        w1 = node(etcd_server, prefix, member("w1"), ttl=long_ttl)
        w2 = node(etcd_server, prefix, member("w2"), ttl=long_ttl)
        admin = EtcdStore(etcd_server.endpoint)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(w1.run)
                await nursery.start(w2.run)
                await until(lambda: sees(w1, w2))
                with trio.fail_after(3):
                    assert await w2.leave() is True
                    await until(lambda: not sees(w1, w2))
                assert await admin.get(w2.key) is None
                assert not w2.ready and w1.ready
                # The leaver keeps following: it still routes its in-flight work.
                await until(lambda: w2.view.revision == w1.view.revision)
                assert set(w2.view.members) == {w1.key}
                assert await w2.leave() is False  # idempotent
                nursery.cancel_scope.cancel()
        finally:
            admin.close()

    trio.run(main)


def test_lost_lease_or_deleted_key_is_registered_again(etcd_server, caplog):
    prefix = fresh_prefix()
    caplog.set_level(logging.WARNING, logger="sipcluster.coordination")

    async def main():
        w1 = node(etcd_server, prefix, member("w1"))
        admin = EtcdStore(etcd_server.endpoint)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(w1.run)
                first = await admin.get(w1.key)
                assert first is not None and first.lease != 0
                # Someone deletes the key; the lease lives on.
                assert await admin.delete(w1.key)
                await until(lambda: not sees(w1, w1))
                await until(lambda: sees(w1, w1) and w1.ready)
                again = await admin.get(w1.key)
                assert again is not None and again.lease == first.lease
                # The lease itself goes (as after a long etcd outage).
                assert await admin.revoke_lease(first.lease)
                await until(lambda: not sees(w1, w1))
                await until(lambda: sees(w1, w1) and w1.ready)
                renewed = await admin.get(w1.key)
                assert renewed is not None and renewed.lease not in (0, first.lease)
                assert renewed.value == member("w1").to_value()
                nursery.cancel_scope.cancel()
        finally:
            admin.close()

    trio.run(main)
    messages = [r.getMessage() for r in caplog.records]
    assert any("deleted while its lease lives" in m for m in messages)
    assert any("lease of" in m and "expired" in m for m in messages)


def test_etcd_restart_keeps_last_view_then_reregisters_and_rewatches(etcd_server, caplog):
    prefix = fresh_prefix()
    caplog.set_level(logging.INFO, logger="sipcluster.coordination")

    async def main():
        w1, w2 = node(etcd_server, prefix, member("w1")), node(etcd_server, prefix, member("w2"))
        w3 = node(etcd_server, prefix, member("w3"))
        async with trio.open_nursery() as nursery:
            await nursery.start(w1.run)
            await nursery.start(w2.run)
            await until(lambda: sees(w1, w2) and sees(w2, w1))
            before = {n: n.view for n in (w1, w2)}
            etcd_server.kill()
            try:
                # Down long enough that the lease refreshes fail too, not only the watches.
                await until(lambda: not (w1.ready or w2.ready or w1.registered or w2.registered))
                # Still routing with the last ring.
                for n, view in before.items():
                    assert set(n.view.members) == set(view.members) == {w1.key, w2.key}
            finally:
                await trio.to_thread.run_sync(etcd_server.start)
            await until(lambda: w1.ready and w2.ready)
            assert w1.registered and w1.following
            admin = EtcdStore(etcd_server.endpoint)
            try:
                assert await admin.get(w1.key) is not None
                assert await admin.get(w2.key) is not None
            finally:
                admin.close()
            # A member that joins after the restart reaches both: the watches are back.
            await nursery.start(w3.run)
            await until(lambda: sees(w1, w3) and sees(w2, w3))
            nursery.cancel_scope.cancel()

    trio.run(main)
    outages = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    # One warning per node for the whole outage, however many retries failed.
    assert len(outages) == 2, outages


def test_watch_failure_resumes_without_missing_events(etcd_server):
    prefix = fresh_prefix()

    async def main():
        store = GatedStore(etcd_server.endpoint)
        w1 = node(etcd_server, prefix, member("w1"), store=store)
        admin = EtcdStore(etcd_server.endpoint)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(w1.run)
                store.gate = trio.Event()
                assert w1.interrupt_watch()
                with trio.fail_after(DEADLINE):
                    await store.held.wait()
                await until(lambda: not w1.ready)
                # Written while w1 has no watch: a join, and a join-and-leave.
                w9 = member_key(prefix, WORKER, "w9")
                w8 = member_key(prefix, WORKER, "w8")
                await admin.put(w8, member("w8").to_value())
                written = await admin.put(w9, member("w9").to_value())
                assert await admin.delete(w8)
                assert w9 not in w1.view.members
                gate, store.gate = store.gate, None
                gate.set()
                await until(lambda: w9 in w1.view.members and w8 not in w1.view.members)
                await until(lambda: w1.ready)
                assert w1.view.revision > written
                # Resumed by watching again from the last revision seen: no full read.
                assert (store.watches, store.reads) == (2, 1)
                nursery.cancel_scope.cancel()
        finally:
            admin.close()

    trio.run(main)


def test_compacted_history_falls_back_to_a_full_read(etcd_server, caplog):
    prefix = fresh_prefix()
    caplog.set_level(logging.WARNING, logger="sipcluster.coordination")

    async def main():
        store = GatedStore(etcd_server.endpoint)
        w1 = node(etcd_server, prefix, member("w1"), store=store)
        admin = EtcdStore(etcd_server.endpoint)
        raw = etcd_server.client()
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(w1.run)
                store.gate = trio.Event()
                assert w1.interrupt_watch()
                with trio.fail_after(DEADLINE):
                    await store.held.wait()
                w9 = member_key(prefix, WORKER, "w9")
                w8 = member_key(prefix, WORKER, "w8")
                await admin.put(w8, member("w8").to_value())
                await admin.put(w9, member("w9").to_value())
                revision = await admin.put(w8, b"not a member record")
                await trio.to_thread.run_sync(raw.compact, revision)
                gate, store.gate = store.gate, None
                gate.set()
                await until(lambda: w9 in w1.view.members and w8 in w1.view.rejected)
                await until(lambda: w1.ready)
                assert w8 not in w1.view.members
                assert w1.view.revision >= revision
                nursery.cancel_scope.cancel()
        finally:
            admin.close()

    trio.run(main)
    assert any("compacted" in r.getMessage() for r in caplog.records)


def test_silent_watch_is_caught_by_the_periodic_read(etcd_server, caplog):
    prefix = fresh_prefix()
    caplog.set_level(logging.WARNING, logger="sipcluster.coordination")

    async def main():
        store = GatedStore(etcd_server.endpoint)
        w1 = node(etcd_server, prefix, member("w1"), store=store, resync_interval=0.3)
        admin = EtcdStore(etcd_server.endpoint)
        try:
            async with trio.open_nursery() as nursery:
                store.mute = True  # every watch "dies" silently from the start
                await nursery.start(w1.run)
                w9 = member_key(prefix, WORKER, "w9")
                await admin.put(w9, member("w9").to_value())
                await until(lambda: w9 in w1.view.members)
                # A read that finds nothing new keeps the view, hence the ring epoch.
                view, reads = w1.view, store.reads
                await until(lambda: store.reads >= reads + 2)
                assert w1.view is view
                nursery.cancel_scope.cancel()
        finally:
            admin.close()

    trio.run(main)
    assert any("had not delivered" in r.getMessage() for r in caplog.records)


def test_from_config_registers_under_the_configured_prefix(etcd_server):
    prefix = fresh_prefix()
    config = Config(cluster=ClusterConfig(prefix=prefix, etcd=(etcd_server.endpoint,),
                                          lease_ttl=TTL, node_id="w1"))

    async def main():
        w1 = EtcdMembership.from_config(config, member("w1"))
        assert w1.ttl == TTL and w1.key == f"{prefix}/members/worker/w1"
        async with trio.open_nursery() as nursery:
            await nursery.start(w1.run)
            assert w1.ready and w1.view.worker("w1") == member("w1")
            nursery.cancel_scope.cancel()
        # The service owned its store and closed it on the way out.
        with pytest.raises(CoordinationError, match="closed"):
            await w1.store.get(w1.key)

    trio.run(main)


# -- the store ---------------------------------------------------------------------

def test_store_helpers_round_trip(etcd_server):
    prefix = fresh_prefix()

    async def main():
        store = EtcdStore([etcd_server.endpoint])
        try:
            key = f"{prefix}/a"
            assert await store.get(key) is None
            lease = await store.grant_lease(TTL)
            assert lease.ttl >= TTL
            revision = await store.put(key, b"1", lease=lease.id)
            kv = await store.get(key)
            assert (kv.value, kv.mod_revision, kv.version, kv.lease) == (b"1", revision, 1, lease.id)
            await store.put(f"{prefix}/b", b"2")
            snapshot = await store.get_prefix(f"{prefix}/")
            assert [(kv.key, kv.value) for kv in snapshot.kvs] == [
                (f"{prefix}/a".encode(), b"1"), (f"{prefix}/b".encode(), b"2")]
            assert snapshot.revision >= revision
            t = store.transactions
            ok, _ = await store.txn([t.version(key) == 1], [t.put(key, b"3", lease=lease.id)], [])
            assert ok and (await store.get(key)).value == b"3"
            ok, _ = await store.txn([t.version(key) == 1], [t.put(key, b"4")], [])
            assert not ok and (await store.get(key)).value == b"3"
            assert await store.refresh_lease(lease.id) > 0
            assert await store.revoke_lease(lease.id) is True
            assert await store.get(key) is None  # the lease took the key with it
            assert await store.refresh_lease(lease.id) <= 0
            assert await store.revoke_lease(lease.id) is False
            assert await store.delete(f"{prefix}/b") is True
            assert await store.delete(f"{prefix}/b") is False
        finally:
            store.close()
        with pytest.raises(CoordinationError, match="closed"):
            await store.get(f"{prefix}/a")

    trio.run(main)


def test_unreachable_etcd_is_a_coordination_error_not_a_stall():
    async def main():
        store = EtcdStore(f"http://127.0.0.1:{free_port()}", timeout=1.0)
        try:
            with trio.fail_after(DEADLINE):
                with pytest.raises(CoordinationError) as caught:
                    await store.put("/k", b"v")
                assert caught.value.reason.startswith("put: ")
                with pytest.raises(CoordinationError):
                    async with store.watch_prefix("/k"):
                        pass
        finally:
            store.close()

    trio.run(main)


@pytest.mark.parametrize("url", ["ftp://127.0.0.1:2379", "http://", "http://h:99999"])
def test_bad_endpoint_urls_are_refused_at_construction(url):
    with pytest.raises(ValueError):
        EtcdStore(url)
