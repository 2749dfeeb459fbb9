"""The worker's admission of inbound messages: stale after a stall, fenced
when its lease may be gone (cluster.sharding.fence)."""

from __future__ import annotations

import pytest

from cluster.sharding.fence import ADMIT, FENCED, STALE, admission
from cluster.sharding.ring import Ring

RING = Ring(["w1", "w2"], vnodes=16)


def call_of(worker: str) -> bytes:
    i = 0
    while RING.owner(b"c%d" % i) != worker:
        i += 1
    return b"c%d" % i


def decide(worker_call: str = "w1", *, request=True, age=0.01, alive=True, current=True, ring=RING,
           newer=False):
    return admission(shard="w1", call_id=call_of(worker_call), request=request, age=age, max_age=5.0,
                     lease_alive=alive, edge_current=current, ring=ring, lease_newer=newer)


def test_fresh_messages_with_a_live_lease_are_admitted():
    assert decide() == ADMIT
    assert decide("w2") == ADMIT  # e.g. pinned here by the edge
    assert decide(request=False) == ADMIT


@pytest.mark.parametrize("alive", [True, False])
def test_what_queued_through_a_stall_longer_than_the_lease_is_dropped(alive):
    # Another shard may own it now: dropped when the lease is in doubt, or
    # when the ring gave the Call-ID away meanwhile.
    assert decide("w2", age=15.0, alive=alive) == STALE
    assert decide("w2", age=15.0, alive=alive, request=False) == (ADMIT if alive else STALE)
    assert decide("w1", age=15.0, alive=alive) == (ADMIT if alive else STALE)
    assert decide("w1", age=15.0, ring=None) == STALE
    assert decide("w1", age=15.0, ring=Ring([])) == STALE
    # Lost and regained meanwhile: the view may not show the move yet.
    assert decide("w1", age=15.0, newer=True) == STALE
    assert decide("w1", age=15.0, newer=True, request=False) == STALE
    assert decide("w1", age=1.0, newer=True) == ADMIT  # fresh: no doubt


def test_a_shard_whose_lease_may_be_gone_takes_no_request_from_an_edge_that_follows_etcd():
    assert decide(alive=False) == FENCED
    assert decide(alive=False, request=False) == ADMIT  # its own client transactions finish
    # Everyone lost etcd (a stall): nobody took the Call-IDs over.
    assert decide(alive=False, current=False) == ADMIT
