"""Membership as pure values: records, events, snapshots, diffs and the ring
they produce (DESIGN §4)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.sharding import (
    BadMemberRecord, Delete, Member, MembershipDiff, MembershipView, Put, Ring, diff, member_key,
    members_prefix,
)

PREFIX = "sipcluster"


def record(node_id: str, role: str = "worker", port: int = 5701, **extra) -> dict:
    body = {"id": node_id, "role": role, "link": f"tcp://127.0.0.1:{port}",
            "http": f"http://127.0.0.1:{port + 1000}/status", "pid": 4242, "host": "node-a",
            "started": 1700000000.25}
    body.update(extra)
    return body


def kv(node_id: str, role: str = "worker", port: int = 5701, **extra) -> tuple[str, bytes]:
    return member_key(PREFIX, role, node_id), json.dumps(record(node_id, role, port, **extra)).encode()


# -- keys -------------------------------------------------------------------------------

def test_keys():
    assert members_prefix("sipcluster") == "/sipcluster/members/"
    assert members_prefix("/prod/sip/") == "/prod/sip/members/"
    assert members_prefix("") == "/members/"
    assert member_key("sipcluster", "worker", "w-1") == "/sipcluster/members/worker/w-1"
    assert member_key("/a/b", "edge", "e1") == "/a/b/members/edge/e1"
    assert member_key(PREFIX, "worker", "w").startswith(members_prefix(PREFIX))


@pytest.mark.parametrize("role, node_id", [("proxy", "w1"), ("worker", ""), ("worker", "a/b"),
                                           ("edge", "\udc80")])
def test_bad_keys_are_refused(role, node_id):
    with pytest.raises(ValueError):
        member_key(PREFIX, role, node_id)


# -- records ----------------------------------------------------------------------------

def test_record_round_trip():
    member = Member(id="w1", role="worker", link="tcp://10.0.0.5:5701",
                    http="http://10.0.0.5:8080/status", pid=17, host="pod-w1", started=1.5)
    key = member_key(PREFIX, "worker", "w1")
    assert Member.from_kv(key, member.to_value()) == member
    assert Member.from_kv(key.encode(), member.to_value()) == member
    assert json.loads(member.to_value()) == {
        "id": "w1", "role": "worker", "link": "tcp://10.0.0.5:5701",
        "http": "http://10.0.0.5:8080/status", "pid": 17, "host": "pod-w1", "started": 1.5}


@settings(max_examples=200, deadline=None)
@given(node_id=st.text(min_size=1, max_size=20).filter(lambda s: "/" not in s and
                                                        not any(0xD800 <= ord(c) < 0xE000 for c in s)),
       role=st.sampled_from(["edge", "worker"]),
       link=st.text(max_size=20).map(lambda s: "tcp://" + s),
       http=st.text(max_size=20), pid=st.integers(0, 2**31), host=st.text(max_size=20),
       started=st.floats(allow_nan=False, allow_infinity=False, min_value=0, max_value=2e9))
def test_any_member_round_trips(node_id, role, link, http, pid, host, started):
    member = Member(node_id, role, link, http, pid, host, started)
    assert Member.from_kv(member_key("p", role, node_id), member.to_value()) == member


def test_unknown_fields_are_ignored_and_optional_fields_default():
    key, value = kv("w1", zone="eu-west-1", weight=3, extras={"a": [1, 2]})
    assert Member.from_kv(key, value) == Member.from_kv(*kv("w1"))
    minimal = json.dumps({"id": "w2", "role": "worker", "link": "ipc:///tmp/w2"}).encode()
    assert Member.from_kv(member_key(PREFIX, "worker", "w2"), minimal) == Member(
        "w2", "worker", "ipc:///tmp/w2", "", 0, "", 0.0)
    nulls = json.dumps({"id": "w3", "role": "worker", "link": "tcp://h:1", "http": None,
                        "pid": None, "host": None, "started": None}).encode()
    assert Member.from_kv(member_key(PREFIX, "worker", "w3"), nulls).pid == 0
    integral = json.dumps(record("w4", started=1700000000)).encode()
    started = Member.from_kv(member_key(PREFIX, "worker", "w4"), integral).started
    assert started == 1700000000.0 and isinstance(started, float)


WORKER_KEY = "/sipcluster/members/worker/w1"
GARBAGE = [
    (WORKER_KEY, b""),
    (WORKER_KEY, b"not json"),
    (WORKER_KEY, b"\xff\xfe\x00garbage"),
    (WORKER_KEY, b"[1, 2, 3]"),
    (WORKER_KEY, b"null"),
    (WORKER_KEY, b"[" * 100_000),
    (WORKER_KEY, json.dumps(record("w2")).encode()),                    # id disagrees with key
    (WORKER_KEY, json.dumps(record("w1", role="edge")).encode()),       # role disagrees
    (WORKER_KEY, json.dumps({"id": "w1", "role": "worker"}).encode()),  # no link
    (WORKER_KEY, json.dumps(record("w1", link="")).encode()),
    (WORKER_KEY, json.dumps(record("w1", link="127.0.0.1:5701")).encode()),
    (WORKER_KEY, json.dumps(record("w1", link=5701)).encode()),
    (WORKER_KEY, json.dumps(record("w1", pid=True)).encode()),
    (WORKER_KEY, json.dumps(record("w1", pid=-1)).encode()),
    (WORKER_KEY, json.dumps(record("w1", pid="12")).encode()),
    (WORKER_KEY, json.dumps(record("w1", started="yesterday")).encode()),
    (WORKER_KEY, b'{"id":"w1","role":"worker","link":"tcp://h:1","started":NaN}'),
    (WORKER_KEY, json.dumps(record("w1", host=["a"])).encode()),
    ("/sipcluster/members/proxy/w1", json.dumps(record("w1", role="proxy")).encode()),
    ("/sipcluster/workers/worker/w1", json.dumps(record("w1")).encode()),
    ("sipcluster/members/worker/w1", json.dumps(record("w1")).encode()),
    ("/members/worker", json.dumps(record("w1")).encode()),
    ("/sipcluster/members/worker/", json.dumps(record("")).encode()),
    (b"/sipcluster/members/worker/\xff", json.dumps(record("\udcff")).encode()),
    ("/sipcluster/members/worker/\udcff", b'{"id":"\\udcff","role":"worker","link":"tcp://h:1"}'),
]


@pytest.mark.parametrize("key, value", GARBAGE)
def test_garbage_records_raise_bad_member_record(key, value):
    with pytest.raises(BadMemberRecord) as caught:
        Member.from_kv(key, value)
    assert isinstance(caught.value, ValueError) and str(caught.value)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.builds(lambda d: json.dumps(d).encode(),
                                           st.dictionaries(st.sampled_from(
                                               ["id", "role", "link", "pid", "started", "x"]),
                                               st.none() | st.booleans() | st.integers() |
                                               st.text(max_size=8) | st.floats())))
def test_any_value_gives_a_member_or_bad_member_record(value):
    try:
        member = Member.from_kv(WORKER_KEY, value)
    except BadMemberRecord:
        return
    assert member.id == "w1" and member.role == "worker" and "://" in member.link


def test_member_constructor_validates():
    with pytest.raises(ValueError):
        Member("w1", "boss", "tcp://h:1")
    with pytest.raises(ValueError):
        Member("w1", "worker", "h:1")
    with pytest.raises(AttributeError):
        Member("w1", "worker", "tcp://h:1").link = "tcp://h:2"  # type: ignore[misc]


# -- views and events -----------------------------------------------------------------

def test_snapshot_reports_garbage_without_dropping_good_members():
    good = [kv("w1"), kv("w2", port=5702), kv("e1", role="edge", port=5801)]
    w3 = member_key(PREFIX, "worker", "w3")
    garbage = [(w3, b"\x00\xff"), ("/sipcluster/members/w4", b"{}"),
               (b"/sipcluster/members/worker/\xff", b"{}")]
    view = MembershipView.from_kvs(100, good + garbage)
    assert [m.id for m in view.workers()] == ["w1", "w2"]
    assert [m.id for m in view.edges()] == ["e1"]
    assert len(view.rejected) == 3 and w3 in view.rejected
    assert all(reason for reason in view.rejected.values())
    assert view.worker("w2").link == "tcp://127.0.0.1:5702"
    assert view.worker("e1") is None and view.worker("w3") is None
    # A garbage value under a member's own key means that member is out.
    overwritten = MembershipView.from_kvs(100, good + GARBAGE[:1])
    assert overwritten.worker("w1") is None and WORKER_KEY in overwritten.rejected


def test_view_is_immutable():
    view = MembershipView.from_kvs(1, [kv("w1")])
    with pytest.raises(TypeError):
        view.members["x"] = view.workers()[0]  # type: ignore[index]
    with pytest.raises(AttributeError):
        view.revision = 2  # type: ignore[misc]
    source = dict([(k, Member.from_kv(k, v)) for k, v in [kv("w1")]])
    copied = MembershipView(1, source)
    source.clear()
    assert len(copied.members) == 1


def test_apply_put_delete_and_revision():
    view = MembershipView.from_kvs(10, [kv("w1")])
    key2, value2 = kv("w2", port=5702)
    after = view.apply([Put(key2, value2, 11), Delete(member_key(PREFIX, "worker", "w1"), 12)])
    assert after.revision == 12 and [m.id for m in after.workers()] == ["w2"]
    assert view.revision == 10 and [m.id for m in view.workers()] == ["w1"]  # unchanged
    # Bytes keys, as etcd delivers them, are the same keys.
    again = after.apply([Delete(key2.encode(), 13)])
    assert again.workers() == () and again.revision == 13


def test_apply_skips_events_already_in_the_snapshot():
    view = MembershipView.from_kvs(20, [kv("w1")])
    key1 = member_key(PREFIX, "worker", "w1")
    assert view.apply([Delete(key1, 19), Put(key1, b"garbage", 3)]) is view
    assert view.apply([]) is view
    # Events at the snapshot's own revision are already in it: replaying changes nothing.
    assert view.apply([Put(*kv("w1"), 20)]) == view
    # One etcd transaction: several events with one revision all apply.
    k2, v2 = kv("w2")
    k3, v3 = kv("w3")
    batch = view.apply([Put(k2, v2, 21), Put(k3, v3, 21), Delete(key1, 19)])
    assert [m.id for m in batch.workers()] == ["w1", "w2", "w3"] and batch.revision == 21


def test_apply_garbage_put_rejects_and_a_fix_or_delete_clears_it():
    key, good = kv("w1")
    view = MembershipView.from_kvs(1, [(key, good)])
    broken = view.apply([Put(key, b"{oops", 2)])
    assert broken.workers() == () and key in broken.rejected
    fixed = broken.apply([Put(key, good, 3)])
    assert fixed.rejected == {} and fixed.worker("w1") is not None
    gone = broken.apply([Delete(key, 3)])
    assert gone.rejected == {} and gone.members == {}


def test_apply_refuses_non_events():
    with pytest.raises(TypeError):
        MembershipView(0, {}).apply([("put", "k", b"v", 1)])  # type: ignore[list-item]


_IDS = ["w1", "w2", "w3", "e1", "e2"]
_values = st.one_of(
    st.builds(lambda p, h: json.dumps(record("{id}", port=p, host=h)), st.integers(5000, 5003),
              st.sampled_from(["a", "b"])),
    st.sampled_from(["{oops", "[]", json.dumps(record("other"))]),
)
_ops = st.lists(
    st.tuples(st.sampled_from(_IDS), st.booleans(), _values, st.integers(0, 2)),
    max_size=30)


@settings(max_examples=300, deadline=None)
@given(_ops, st.integers(1, 5))
def test_applying_events_equals_a_snapshot_read_directly(ops, chunk):
    """A node that watched every event agrees with one that read the prefix."""
    state: dict[str, bytes] = {}
    start = MembershipView.from_kvs(0, [])
    events: list = []
    revision = 1
    for node_id, is_put, template, step in ops:
        revision += step  # step 0: same etcd transaction as the previous event
        role = "edge" if node_id.startswith("e") else "worker"
        key = member_key(PREFIX, role, node_id)
        if is_put:
            value = template.replace('"worker"', f'"{role}"').replace("{id}", node_id).encode()
            state[key] = value
            events.append(Put(key, value, revision))
        else:
            state.pop(key, None)
            events.append(Delete(key, revision))
    watched = start
    for i in range(0, len(events), chunk):
        watched = watched.apply(events[i:i + chunk])
    direct = MembershipView.from_kvs(watched.revision, state.items())
    assert watched == direct
    # Replaying the whole watch (a restart from revision 0) changes nothing.
    assert watched.apply(events) == watched
    assert watched.revision == max((e.revision for e in events), default=0)
    assert watched.ring(vnodes=16).members == direct.ring(vnodes=16).members


# -- diffs ----------------------------------------------------------------------------------

def test_diff():
    old = MembershipView.from_kvs(5, [kv("w1"), kv("w2", port=5702), kv("e1", role="edge")])
    new = old.apply([
        Delete(member_key(PREFIX, "worker", "w2"), 6),
        Put(*kv("w3", port=5703), 7),
        Put(*kv("w1", port=5799), 8),                  # restarted with a new link
        Put(member_key(PREFIX, "worker", "w9"), b"garbage", 9),
    ])
    change = diff(old, new)
    assert [m.id for m in change.joined] == ["w3"]
    assert [m.id for m in change.left] == ["w2"]
    assert [(a.link, b.link) for a, b in change.changed] == [
        ("tcp://127.0.0.1:5701", "tcp://127.0.0.1:5799")]
    assert [k for k, _ in change.rejected] == [member_key(PREFIX, "worker", "w9")]
    assert change.ring_changed and change
    assert not diff(new, new) and diff(new, new) == MembershipDiff((), (), (), ())
    # Reporting a rejection once: a later view with the same garbage is quiet.
    assert not diff(new, new.apply([Put(member_key(PREFIX, "worker", "w9"), b"garbage", 10)]))


def test_diff_of_edges_or_link_changes_does_not_change_the_ring():
    old = MembershipView.from_kvs(1, [kv("w1")])
    new = old.apply([Put(*kv("e1", role="edge"), 2), Put(*kv("w1", port=6000), 3)])
    change = diff(old, new)
    assert change and not change.ring_changed
    assert old.ring().members == new.ring().members


# -- the ring of a view ------------------------------------------------------------------

def test_ring_is_built_from_workers_with_the_revision_as_epoch():
    view = MembershipView.from_kvs(
        77, [kv("w2"), kv("w1"), kv("e1", role="edge"), GARBAGE[1]])
    ring = view.ring(vnodes=32)
    assert isinstance(ring, Ring)
    assert ring.members == ("w2",) and ring.epoch == 77 and ring.vnodes == 32
    assert view.worker(ring.owner(b"any-call-id@host")).id == "w2"


def test_views_with_the_same_members_agree_on_every_owner():
    kvs = [kv(f"w{i}", port=5700 + i) for i in range(8)] + [kv("e1", role="edge")]
    one = MembershipView.from_kvs(500, kvs)
    other = MembershipView.from_kvs(3, []).apply(
        Put(k, v, 10 + i) for i, (k, v) in enumerate(reversed(kvs)))
    assert one.members == other.members and one.revision != other.revision
    a, b = one.ring(), other.ring()
    keys = [b"%d-%x@10.0.0.%d" % (i, i * 7919, i % 255) for i in range(5000)]
    assert [a.owner(k) for k in keys] == [b.owner(k) for k in keys]


def test_draining_worker_stays_a_member_but_leaves_the_ring():
    import json as _json
    from cluster.sharding.membership import Member as _Member, MembershipView as _View, member_key as _key
    live = _Member(id="w1", role="worker", link="tcp://127.0.0.1:1")
    leaving = _Member(id="w2", role="worker", link="tcp://127.0.0.1:2", draining=True)
    kvs = [(_key("/p", "worker", m.id), m.to_value()) for m in (live, leaving)]
    view = _View.from_kvs(7, kvs)
    assert {m.id for m in view.workers()} == {"w1", "w2"}
    assert view.ring().members == ("w1",)
    assert _json.loads(leaving.to_value())["draining"] is True
    assert _Member.from_kv(kvs[1][0], kvs[1][1]).draining is True
    assert "draining" not in _json.loads(live.to_value())


def test_link_version_is_published_and_defaults_to_one():
    member = Member(id="e1", role="edge", link="ipc:///tmp/e1", link_version=2)
    key = member_key(PREFIX, "edge", "e1")
    assert json.loads(member.to_value())["link_version"] == 2
    assert Member.from_kv(key, member.to_value()).link_version == 2
    older = json.dumps({"id": "e1", "role": "edge", "link": "ipc:///tmp/e1"}).encode()
    assert Member.from_kv(key, older).link_version == 1  # a node that reads maps only


@pytest.mark.parametrize("bad", [0, -1, "2", True, 1.5, None])
def test_a_bad_link_version_is_refused(bad):
    value = json.dumps({"id": "e1", "role": "edge", "link": "ipc:///tmp/e1", "link_version": bad}).encode()
    with pytest.raises(BadMemberRecord, match="link_version"):
        Member.from_kv(member_key(PREFIX, "edge", "e1"), value)
