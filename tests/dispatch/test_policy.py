"""Destination-set policies: pure orderings of a set's members for one call."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from cluster.dispatch import DestinationSet, Dispatcher, HealthRecord, InvalidSet, Member, order

GW = [Member.make(f"sip:gw{i}.example.net:5060", priority=p, weight=w)
      for i, (p, w) in enumerate([(10, 1), (0, 3), (5, 6)])]


def dset(policy: str, members=GW) -> DestinationSet:
    return DestinationSet.make("carriers", policy, tuple(members))


def up(_member) -> bool:
    return True


def uris(members) -> list[str]:
    return [m.uri.split("@")[-1].split(".")[0].removeprefix("sip:") for m in members]


def test_priority_orders_by_priority_and_keeps_listed_order_for_ties():
    assert uris(order(dset("priority"), up, "c1")) == ["gw1", "gw2", "gw0"]
    tied = [Member.make("sip:a.example", priority=1), Member.make("sip:b.example", priority=1)]
    assert [m.uri for m in order(dset("priority", tied), up, "c")] == ["sip:a.example", "sip:b.example"]


def test_a_member_that_is_down_is_left_out():
    assert uris(order(dset("priority"), lambda m: "gw1" not in m.uri, "c1")) == ["gw2", "gw0"]
    assert order(dset("priority"), lambda m: False, "c1") == []


def test_hash_gives_the_same_order_for_a_call_id_and_spreads_calls():
    first = Counter()
    for n in range(3000):
        call_id = f"call-{n}@example"
        a = order(dset("hash"), up, call_id)
        assert a == order(dset("hash", list(reversed(GW))), up, call_id), "independent of listed order"
        first[a[0].uri] += 1
    assert all(900 <= count <= 1100 for count in first.values()), first


def test_hash_moves_only_the_calls_of_a_member_that_goes_down():
    moved = 0
    for n in range(1000):
        before = order(dset("hash"), up, f"c{n}")
        after = order(dset("hash"), lambda m: m != GW[0], f"c{n}")
        if before[0] != GW[0]:
            moved += before[0] != after[0]
        else:
            assert after[0] == before[1], "its calls go to their next member"
    assert moved == 0


def test_round_robin_rotates_with_the_shard_position():
    assert [uris(order(dset("round-robin"), up, "c", rotation=r))[0] for r in range(4)] == \
        ["gw0", "gw1", "gw2", "gw0"]


def test_weighted_follows_the_weights_with_a_seeded_generator():
    rng = random.Random(7)
    first = Counter(order(dset("weighted"), up, "c", rng=rng)[0].uri for _ in range(10000))
    shares = {uri: count / 10000 for uri, count in first.items()}
    assert shares[GW[0].uri] == pytest.approx(0.1, abs=0.02)
    assert shares[GW[1].uri] == pytest.approx(0.3, abs=0.02)
    assert shares[GW[2].uri] == pytest.approx(0.6, abs=0.02)
    # The whole order is a permutation: the failover order has every member.
    assert sorted(m.uri for m in order(dset("weighted"), up, "c", rng=rng)) == sorted(m.uri for m in GW)
    again = [order(dset("weighted"), up, "c", rng=random.Random(7))[0] for _ in range(1)]
    assert again[0] == order(dset("weighted"), up, "c", rng=random.Random(7))[0], "seeded: reproducible"


def test_least_calls_prefers_the_member_with_fewest_active_calls():
    active = {GW[1].uri: 4, GW[2].uri: 1}
    assert uris(order(dset("least-calls"), up, "c", active=active)) == ["gw0", "gw2", "gw1"]


def test_the_dispatcher_counts_calls_until_they_end():
    dispatcher = Dispatcher()
    dispatcher.put_set(dset("least-calls"))
    chosen = [dispatcher.choose("carriers", f"c{n}")[0].uri for n in range(3)]
    for n, uri in enumerate(chosen):
        dispatcher.active.begin(f"c{n}", ("carriers", uri), 0.0)
    # Nothing counted yet when choosing: every call went to the same first member.
    assert len(set(chosen)) == 1
    spread = []
    for n in range(3, 6):
        uri = dispatcher.choose("carriers", f"c{n}")[0].uri
        dispatcher.active.begin(f"c{n}", ("carriers", uri), 0.0)
        spread.append(uri)
    assert len(set(spread)) == 2, "the next calls avoid the busy member"
    dispatcher.active.end_call("c0")
    dispatcher.active.release("c1", ("carriers", chosen[1]))
    assert dispatcher.active.counts[("carriers", chosen[0])] == 1
    # A call whose BYE never came stops counting after max_call_age.
    assert dispatcher.active.sweep(10 ** 6) == 4
    assert not dispatcher.active.counts


def test_the_dispatcher_routes_by_health_and_knows_unknown_sets():
    dispatcher = Dispatcher()
    dispatcher.put_set(dset("priority"))
    assert dispatcher.choose("nope", "c") is None
    dispatcher.put_health(("carriers", GW[1].uri), HealthRecord(False, None))
    assert uris(dispatcher.choose("carriers", "c")) == ["gw2", "gw0"]
    dispatcher.put_health(("carriers", GW[1].uri), HealthRecord(True, 200))
    assert uris(dispatcher.choose("carriers", "c"))[0] == "gw1"


@pytest.mark.parametrize("make", [
    lambda: Member.make("tel:+1234"),
    lambda: Member.make("sip:gw.example", weight=-1),
    lambda: Member.make("sip:gw.example", priority=True),
    lambda: Member.make("not a uri"),
    lambda: DestinationSet.make("bad name", "hash", ()),
    lambda: DestinationSet.make("s", "fastest", ()),
    lambda: DestinationSet.make("s", "hash", (GW[0], GW[0])),
])
def test_bad_sets_and_members_are_refused_with_a_reason(make):
    with pytest.raises(InvalidSet):
        make()
