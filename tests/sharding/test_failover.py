"""The edge's Router: suspects, pins and the held ring, with ``now`` by hand."""

from __future__ import annotations

import pytest

from cluster.sharding.failover import Router
from cluster.sharding.ring import EmptyRing, Ring

VN = 16


def keys_of(ring: Ring, worker: str, n: int = 50) -> list[bytes]:
    found = []
    i = 0
    while len(found) < n:
        key = f"call-{i}".encode()
        i += 1
        if ring.owner(key) == worker:
            found.append(key)
    return found


def router(*workers: str, epoch: int = 7, **kw) -> tuple[Router, Ring]:
    r = Router(vnodes=VN, **kw)
    ring = Ring(workers, epoch=epoch, vnodes=VN)
    r.update(ring, set(workers), now=0.0)
    return r, ring


def test_no_ring_yet_is_empty():
    with pytest.raises(EmptyRing):
        Router().owner(b"x", 0.0)


def test_suspect_worker_calls_go_to_the_owner_etcd_will_name():
    r, ring = router("w1", "w2", "w3")
    owned = keys_of(ring, "w1")
    assert r.suspect("w1", 1.0) and not r.suspect("w1", 1.1)
    after_expiry = Ring(["w2", "w3"], vnodes=VN)
    for key in owned:
        assert r.owner(key, 1.2) == after_expiry.owner(key)
    # Others' Call-IDs do not move.
    for key in keys_of(ring, "w2"):
        assert r.owner(key, 1.2) == "w2"
    assert r.rerouted == len(owned)
    assert r.effective is not None and r.effective.epoch == 7 and "w1" not in r.effective


def test_returning_worker_does_not_take_pinned_call_ids_back_until_pin_ttl():
    r, ring = router("w1", "w2", pin_ttl=32.0)
    owned = keys_of(ring, "w1", 10)
    r.suspect("w1", 1.0)
    assert {r.owner(k, 1.5) for k in owned} == {"w2"}
    assert r.restore("w1", 2.0)
    # Mid-transaction Call-IDs stay on w2 while messages keep coming ...
    assert {r.owner(k, 20.0) for k in owned} == {"w2"}
    assert {r.owner(k, 50.0) for k in owned} == {"w2"}  # refreshed at 20 s
    # ... a Call-ID never rerouted goes to its owner at once.
    fresh = [k for k in keys_of(ring, "w1", 30) if k not in owned][0]
    assert r.owner(fresh, 50.0) == "w1"
    # After pin_ttl without a message they go home.
    r.expire(90.0)
    assert r.pinned == 0
    assert {r.owner(k, 90.0) for k in owned} == {"w1"}


def test_etcd_confirmation_and_restart_under_the_same_id_keep_pins():
    r, ring = router("w1", "w2")
    owned = keys_of(ring, "w1", 5)
    r.suspect("w1", 1.0)
    for key in owned:
        r.owner(key, 1.0)
    # The lease expires: w1 leaves the view; then it registers again.
    r.update(Ring(["w2"], epoch=9, vnodes=VN), {"w2"}, 6.0)
    r.update(Ring(["w1", "w2"], epoch=11, vnodes=VN), {"w1", "w2"}, 7.0)
    r.restore("w1", 7.1)
    assert r.effective is not None and r.effective.epoch == 11
    assert {r.owner(k, 8.0) for k in owned} == {"w2"}


def test_worker_that_left_etcd_alone_is_not_held():
    r, ring = router("w1", "w2")
    r.update(Ring(["w2"], epoch=8, vnodes=VN), {"w2"}, 1.0)
    assert r.held == ()
    assert {r.owner(k, 1.0) for k in keys_of(ring, "w1", 10)} == {"w2"}


def test_view_emptied_at_once_holds_workers_with_live_links():
    r, ring = router("w1", "w2", "w3")
    r.suspect("w3", 0.5)  # its link is down too: not held
    # Two batches of lease expiries after an etcd stall.
    r.update(Ring(["w1", "w2"], epoch=8, vnodes=VN), {"w1", "w2"}, 1.0)
    r.update(Ring([], epoch=9, vnodes=VN), set(), 1.0)
    assert r.held == ("w1", "w2")
    assert r.effective is not None and set(r.effective) == {"w1", "w2"}
    assert r.owner(b"any", 1.1) in ("w1", "w2")
    # A held worker whose link dies is dropped.
    r.suspect("w2", 2.0)
    assert {r.owner(k, 2.1) for k in keys_of(ring, "w2", 10)} == {"w1"}
    # The workers register again: the hold ends.
    r.update(Ring(["w1", "w2"], epoch=12, vnodes=VN), {"w1", "w2"}, 3.0)
    assert r.held == ()


def test_draining_workers_are_never_held():
    r, _ = router("w1")
    r.update(Ring([], epoch=8, vnodes=VN), {"w1"}, 1.0)  # still a member, draining
    assert r.held == ()
    with pytest.raises(EmptyRing):
        r.owner(b"x", 1.0)


def test_pins_are_bounded_and_suspects_forgotten_after_etcd_confirms():
    r, ring = router("w1", "w2", max_pins=3)
    owned = keys_of(ring, "w1", 10)
    r.suspect("w1", 1.0)
    for key in owned:
        r.owner(key, 1.0)
    assert r.pinned == 3 and r.pins_evicted == 7
    r.update(Ring(["w2"], epoch=9, vnodes=VN), {"w2"}, 2.0)
    r.expire(40.0)
    assert r.suspects == {} and r.departed == () and r.pinned == 0
    # Nothing left to pin against.
    r.owner(owned[0], 41.0)
    assert r.pinned == 0


def test_bad_parameters_refused():
    with pytest.raises(ValueError):
        Router(pin_ttl=0)
    with pytest.raises(ValueError):
        Router(max_pins=0)
