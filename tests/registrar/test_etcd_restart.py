"""The store and the cache across an etcd restart (own module: own etcd)."""

from __future__ import annotations

import time

import grpc
import trio

from cluster.registrar import Binding, Outcome, register
from cluster.registrar.cache import STALENESS_BOUND, LocationCache
from cluster.registrar.etcd_store import EtcdLocationStore

from .samples import register_request

AOR = "sip:alice@example.com"


def test_store_answers_503_while_etcd_is_down_and_cache_replays_after(etcd_server):
    async def main():
        store = EtcdLocationStore(lambda: etcd_server.client(), prefix="restart")
        cache = LocationCache(lambda: etcd_server.client(), prefix="restart", retry_interval=0.2)
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            await nursery.start(cache.run)
            now = time.time()
            first = Binding(aor=AOR, contact="sip:before@10.0.0.1", expires_at=now + 600, call_id="a", cseq=1)
            await cache.wait_for_revision(await store.apply(AOR, [first], [], expect=None))

            await trio.to_thread.run_sync(etcd_server.stop)
            down = await register(store, register_request(["<sip:during@10.0.0.2>"], call_id="b"), now=now)

            await trio.to_thread.run_sync(etcd_server.start)
            # Let the store's gRPC channel reconnect (no blind retry loop).
            channel = store._kv.client.channel
            await trio.to_thread.run_sync(lambda: grpc.channel_ready_future(channel).result(timeout=10))
            up = await register(store, register_request(["<sip:after@10.0.0.3>"], call_id="c"), now=now)
            written = (await store.read(AOR)).version.revision
            start = trio.current_time()
            with trio.fail_after(STALENESS_BOUND + 1.0):
                await cache.wait_for_revision(written)
            caught_up = trio.current_time() - start
            contacts = sorted(b.contact for b in cache.lookup(AOR, now))
            nursery.cancel_scope.cancel()
        return down, up, contacts, cache.counters, cache.last_error, caught_up

    down, up, contacts, counters, last_error, caught_up = trio.run(main)
    assert (down.status, down.outcome) == (503, Outcome.STORE_UNAVAILABLE)
    assert ("Retry-After", "5") in down.headers
    assert up.status == 200
    assert contacts == ["sip:after@10.0.0.3", "sip:before@10.0.0.1"]
    # Recovered by re-watching from the last revision, not by a full read.
    assert counters.rewatches >= 1 and counters.resyncs == 1
    assert last_error is not None
    assert caught_up < STALENESS_BOUND
