"""Credential records: the pure format, the worker cache, and etcd storage."""

from __future__ import annotations

import itertools
import json

import pytest

from cluster.auth.digest import ALGORITHMS, MD5, SHA256, NonceManager, challenge, credential, ha1, verify
from cluster.auth.users import (
    BadUserRecord, UnknownUser, UserCache, UserDirectory, UserExists, canonical_user,
    make_user_record, parse_user_record, user_key, users_prefix, validate_settings,
)
from cluster.coordination.errors import CoordinationError
from cluster.sharding import Delete, Put

NOW = 1_700_000_000.0
NONCES = NonceManager(b"s" * 32)
_prefixes = itertools.count()


def encoded(record: dict) -> bytes:
    return json.dumps(record).encode()


def login(ha1_lookup, username: str, password: str, realm: str, algorithm: str):
    (offer,) = challenge(realm, NONCES.make(NOW, realm=realm), algorithms=(algorithm,))
    cred = credential(offer, username=username, password=password, method="REGISTER",
                      uri=f"sip:{realm}", cnonce="c0ffee")
    return verify(cred, method="REGISTER", realm=realm, now=NOW, nonces=NONCES, ha1=ha1_lookup)


# --- names and keys -----------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("alice@example.com", "alice@example.com"),
    ("  Alice@EXAMPLE.com ", "Alice@example.com"),  # user part is case-sensitive, host is not
    ("sip:alice@example.com", "alice@example.com"),
    ("SIPS:alice@Example.com", "alice@example.com"),
    ("al%69ce@example.com", "alice@example.com"),    # RFC 3261 §19.1.4 escapes
    ("+15551234@example.com", "+15551234@example.com"),
])
def test_canonical_user(text, expected):
    assert canonical_user(text) == expected


@pytest.mark.parametrize("text, problem", [
    ("", "empty"),
    ("alice", "no '@'"),
    ("alice@", "not a valid"),
    ("@example.com", "empty user part"),
    ("alice:secret@example.com", "password"),
    ("alice@example.com:5060", "port"),
    ("alice@example.com;transport=tcp", "parameters"),
    ("a/b@example.com", "'/'"),
    ("alice@exa mple.com", "not a valid"),
    ("sip:example.com", "no '@'"),
])
def test_bad_user_names_are_named(text, problem):
    with pytest.raises(ValueError, match=problem):
        canonical_user(text)


def test_non_text_user_is_refused():
    with pytest.raises(ValueError, match="as text"):
        canonical_user(42)  # type: ignore[arg-type]


def test_keys():
    assert users_prefix("/sipcluster") == "/sipcluster/users/"
    assert users_prefix("sipcluster/") == "/sipcluster/users/"
    assert user_key("/sipcluster", "sip:Alice@Example.com") == "/sipcluster/users/Alice@example.com"


# --- the record ---------------------------------------------------------------


def test_make_user_record_holds_hashes_not_the_password():
    record = make_user_record("sip:alice@Example.com", "wonderland")
    assert record == {
        "aor": "sip:alice@example.com",
        "username": "alice",
        "realm": "example.com",
        "ha1_md5": ha1("alice", "example.com", "wonderland", MD5),
        "ha1_sha256": ha1("alice", "example.com", "wonderland", SHA256),
        "settings": {},
    }
    assert b"wonderland" not in encoded(record)


def test_custom_realm_and_escaped_username():
    record = make_user_record("al%20ice@example.com", "pw", realm="Acme Corp")
    assert record["realm"] == "Acme Corp"
    assert record["username"] == "al ice"
    assert record["ha1_md5"] == ha1("al ice", "Acme Corp", "pw", MD5)


@pytest.mark.parametrize("password, realm, problem", [
    ("", None, "password"), (None, None, "password"), ("pw", "", "realm"), ("pw", "a\nb", "realm"),
])
def test_make_user_record_rejects_bad_password_or_realm(password, realm, problem):
    with pytest.raises(ValueError, match=problem):
        make_user_record("alice@example.com", password, realm)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_stored_ha1_verifies_with_digest(algorithm):
    record = parse_user_record(encoded(make_user_record("alice@example.com", "wonderland")))
    lookup = lambda u, r, a: record.ha1_for(a) if (u, r) == (record.username, record.realm) else None  # noqa: E731
    assert login(lookup, "alice", "wonderland", "example.com", algorithm).ok
    assert not login(lookup, "alice", "guess", "example.com", algorithm).ok


def test_parse_round_trip_keeps_unknown_fields():
    stored = make_user_record("alice@example.com", "pw", settings={"forward_busy": "sip:vm@example.com"})
    stored["added_by"] = "ops"
    record = parse_user_record(encoded(stored))
    assert record.aor == "sip:alice@example.com" and record.user_at_domain == "alice@example.com"
    assert dict(record.settings) == {"forward_busy": "sip:vm@example.com"}
    assert json.loads(record.to_value()) == stored
    assert parse_user_record(record.to_value()) == record
    with pytest.raises(TypeError):
        record.settings["forward_busy"] = "sip:x@y"  # type: ignore[index]


def test_ha1_for_and_owns():
    record = parse_user_record(encoded(make_user_record("alice@example.com", "pw")))
    assert record.ha1_for("MD5") == record.ha1_for("md5-sess") == record.ha1_md5
    assert record.ha1_for("SHA-256") == record.ha1_for("sha-256-SESS") == record.ha1_sha256
    assert record.ha1_for("SHA-512-256") is None
    assert record.owns("sip:alice@example.com") and record.owns("sips:alice@example.com")
    assert not record.owns("sip:bob@example.com") and not record.owns("sip:alice@example.org")


def test_record_with_one_hash_and_no_username():
    record = parse_user_record(json.dumps({
        "aor": "sip:bob@example.com", "realm": "example.com", "ha1_md5": "A" * 32}).encode())
    assert (record.username, record.ha1_md5, record.ha1_sha256) == ("bob", "a" * 32, None)
    assert record.ha1_for(SHA256) is None and dict(record.settings) == {}


@pytest.mark.parametrize("value, problem", [
    (b"not json", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b'{"realm": "r", "ha1_md5": "' + b"a" * 32 + b'"}', "'aor'"),
    (b'{"aor": "alice", "realm": "r", "ha1_md5": "' + b"a" * 32 + b'"}', "'aor'"),
    (b'{"aor": "sip:a@b", "ha1_md5": "' + b"a" * 32 + b'"}', "'realm'"),
    (b'{"aor": "sip:a@b", "realm": "r"}', "no HA1"),
    (b'{"aor": "sip:a@b", "realm": "r", "ha1_md5": "abc"}', "MD5 hex"),
    (b'{"aor": "sip:a@b", "realm": "r", "ha1_sha256": "' + b"a" * 32 + b'"}', "SHA-256 hex"),
    (b'{"aor": "sip:a@b", "realm": "r", "ha1_md5": "' + b"a" * 32 + b'", "settings": []}', "settings"),
    (b'{"aor": "sip:a@b", "realm": "r", "username": 5, "ha1_md5": "' + b"a" * 32 + b'"}', "username"),
    (b"[" * 100_000, "not JSON"),
])
def test_parse_rejects_unusable_records(value, problem):
    with pytest.raises(BadUserRecord, match=problem):
        parse_user_record(value)


# --- settings -----------------------------------------------------------------


def test_settings_validation_accepts_forwarding():
    settings = {"forward_always": " sip:bob@example.com ", "forward_busy": "tel:+15551234",
                "forward_noanswer": "sips:vm@example.com", "noanswer_timeout": 20,
                "forward_unknown_later": ["kept", 1], "dnd": True}
    checked = validate_settings(settings)
    assert checked["forward_always"] == "sip:bob@example.com"
    assert checked["noanswer_timeout"] == 20 and checked["dnd"] is True
    assert validate_settings({"forward_always": None, "noanswer_timeout": None}) == {}
    assert validate_settings(None) == {}


@pytest.mark.parametrize("settings, problem", [
    ([("a", 1)], "mapping"),
    ({"": 1}, "non-empty"),
    ({"forward_always": 5}, "URI string"),
    ({"forward_busy": "sip:"}, "not a URI"),
    ({"forward_noanswer": "http://example.com/"}, "sip:, sips: or tel:"),
    ({"noanswer_timeout": 0}, "noanswer_timeout"),
    ({"noanswer_timeout": True}, "noanswer_timeout"),
    ({"noanswer_timeout": float("nan")}, "noanswer_timeout"),
    ({"noanswer_timeout": 10_000}, "noanswer_timeout"),
    ({"noanswer_timeout": "20"}, "noanswer_timeout"),
    ({"custom": object()}, "JSON"),
    ({"custom": float("inf")}, "JSON"),
])
def test_settings_validation_names_the_problem(settings, problem):
    with pytest.raises(ValueError, match=problem):
        validate_settings(settings)


# --- the worker cache ---------------------------------------------------------

P = "/sc"


def kv(user: str, password: str = "pw", **kwargs) -> tuple[str, bytes]:
    return user_key(P, user), encoded(make_user_record(user, password, **kwargs))


def test_cache_answers_digest_lookups():
    cache = UserCache.from_kvs(10, [kv("alice@example.com", "wonderland"), kv("bob@example.org")])
    assert cache.revision == 10 and len(cache) == 2
    assert login(cache.ha1, "alice", "wonderland", "example.com", SHA256).ok
    assert login(cache.ha1, "alice", "wonderland", "example.com", MD5).ok
    assert login(cache.ha1, "alice", "wonderland", "example.org", MD5).reason == "unknown user"
    assert cache.get("sips:alice@example.com").aor == "sip:alice@example.com"
    assert "alice@example.com" in cache and "carol@example.com" not in cache and 5 not in cache
    assert [r.aor for r in cache.records()] == ["sip:alice@example.com", "sip:bob@example.org"]


def test_cache_applies_events_in_order_and_skips_old_ones():
    cache = UserCache.from_kvs(10, [kv("alice@example.com", "old")])
    key, value = kv("alice@example.com", "new")
    cache.apply([Put(key, value, 9)])  # older than the read: already reflected
    assert login(cache.ha1, "alice", "old", "example.com", MD5).ok
    cache.apply([Put(key.encode(), value, 11), Put(*kv("bob@example.com"), 12)])
    assert login(cache.ha1, "alice", "new", "example.com", MD5).ok
    assert cache.revision == 12 and len(cache) == 2
    cache.apply([Delete(key, 13)])
    assert cache.get("alice@example.com") is None and cache.ha1("alice", "example.com", MD5) is None
    assert cache.revision == 13
    with pytest.raises(TypeError):
        cache.apply(["not an event"])  # type: ignore[list-item]


def test_cache_reports_and_recovers_rejected_records():
    key, good = kv("alice@example.com")
    cache = UserCache.from_kvs(1, [(key, b"garbage"), (user_key(P, "bob@example.com"), good)])
    assert len(cache) == 0
    assert "not JSON" in cache.rejected[key]
    assert "under key" in cache.rejected[user_key(P, "bob@example.com")]  # alice's record under bob
    cache.apply([Put(key, good, 2)])
    assert key not in cache.rejected and cache.get("alice@example.com") is not None
    cache.apply([Put(key, b"{}", 3)])  # a good record turning bad is no longer a user
    assert cache.get("alice@example.com") is None and key in cache.rejected
    cache.apply([Delete(user_key(P, "bob@example.com"), 4)])
    assert set(cache.rejected) == {key}


def test_cache_refuses_ambiguous_digest_identity():
    cache = UserCache.from_kvs(1, [kv("alice@a.example", realm="shared"),
                                   kv("alice@b.example", realm="shared")])
    assert cache.lookup("alice", "shared") is None and cache.ha1("alice", "shared", MD5) is None
    assert cache.conflicts() == [("alice", "shared", ("alice@a.example", "alice@b.example"))]
    cache.apply([Delete(user_key(P, "alice@b.example"), 2)])
    assert cache.lookup("alice", "shared").aor == "sip:alice@a.example"
    assert cache.conflicts() == []


def test_cache_load_replaces_everything():
    cache = UserCache.from_kvs(5, [kv("alice@example.com"), (user_key(P, "x@y"), b"bad")])
    cache.load(7, [kv("bob@example.com")])
    assert [r.username for r in cache.records()] == ["bob"]
    assert cache.revision == 7 and dict(cache.rejected) == {}


# --- the etcd store -----------------------------------------------------------


@pytest.fixture
def directory(etcd_server):
    # A fresh prefix per test: the server is shared by the module.
    return UserDirectory(etcd_server.client(), f"/users-test-{next(_prefixes)}")


def test_add_get_list_delete(directory):
    added = directory.add("alice@Example.com", "wonderland")
    assert added.aor == "sip:alice@example.com"
    directory.add("sip:bob@example.com", "builder", realm="Acme", settings={"noanswer_timeout": 15})
    assert directory.get("alice@example.com") == added
    bob = directory.get("bob@example.com")
    assert bob.realm == "Acme" and dict(bob.settings) == {"noanswer_timeout": 15}
    assert [r.aor for r in directory.list()] == ["sip:alice@example.com", "sip:bob@example.com"]
    assert directory.delete("alice@example.com") is True
    assert directory.delete("alice@example.com") is False
    assert directory.get("alice@example.com") is None
    assert [r.username for r in directory.list()] == ["bob"]


def test_stored_value_has_no_password_and_verifies(directory, etcd_server):
    directory.add("alice@example.com", "wonderland")
    raw, _ = etcd_server.client().get(user_key(directory.prefix, "alice@example.com"))
    assert b"wonderland" not in raw
    assert set(json.loads(raw)) == {"aor", "username", "realm", "ha1_md5", "ha1_sha256", "settings"}
    cache = directory.snapshot()
    for algorithm in ALGORITHMS:
        assert login(cache.ha1, "alice", "wonderland", "example.com", algorithm).ok
        assert not login(cache.ha1, "alice", "Wonderland", "example.com", algorithm).ok


def test_add_twice_needs_replace_which_keeps_settings(directory):
    directory.add("alice@example.com", "one", settings={"forward_busy": "sip:vm@example.com"})
    with pytest.raises(UserExists, match="alice@example.com"):
        directory.add("alice@example.com", "two")
    replaced = directory.add("alice@example.com", "two", replace=True)
    assert dict(replaced.settings) == {"forward_busy": "sip:vm@example.com"}
    assert login(directory.snapshot().ha1, "alice", "two", "example.com", SHA256).ok
    cleared = directory.add("alice@example.com", "three", settings={}, replace=True)
    assert dict(cleared.settings) == {}
    assert directory.add("carol@example.com", "x", replace=True).username == "carol"


def test_settings_round_trip(directory):
    directory.add("alice@example.com", "pw")
    forwarding = {"forward_always": "sip:bob@example.com", "forward_busy": "tel:+15551234",
                  "forward_noanswer": "sip:vm@example.com", "noanswer_timeout": 20}
    updated = directory.set_settings("sip:alice@example.com", forwarding)
    assert dict(updated.settings) == forwarding
    fetched = directory.get("alice@example.com")
    assert dict(fetched.settings) == forwarding
    assert fetched.ha1_md5 == updated.ha1_md5  # credentials untouched
    assert dict(directory.set_settings("alice@example.com", {}).settings) == {}


def test_set_settings_errors(directory):
    with pytest.raises(UnknownUser, match="bob@example.com"):
        directory.set_settings("bob@example.com", {"noanswer_timeout": 5})
    directory.add("bob@example.com", "pw")
    with pytest.raises(ValueError, match="noanswer_timeout"):
        directory.set_settings("bob@example.com", {"noanswer_timeout": -1})
    assert dict(directory.get("bob@example.com").settings) == {}


def test_bad_input_errors_before_touching_etcd(directory):
    with pytest.raises(ValueError, match="no '@'"):
        directory.add("alice", "pw")
    with pytest.raises(ValueError, match="password"):
        directory.add("alice@example.com", "")
    with pytest.raises(ValueError, match="port"):
        directory.get("alice@example.com:5060")
    with pytest.raises(ValueError, match="forward_always"):
        directory.add("alice@example.com", "pw", settings={"forward_always": "mailto:a@b"})
    assert directory.list() == []


def test_list_skips_and_snapshot_reports_broken_records(directory, etcd_server):
    directory.add("alice@example.com", "pw")
    broken = user_key(directory.prefix, "mallory@example.com")
    etcd_server.client().put(broken, b"{not json")
    assert [r.username for r in directory.list()] == ["alice"]
    snapshot = directory.snapshot()
    assert list(snapshot.rejected) == [broken] and snapshot.revision > 0
    with pytest.raises(BadUserRecord):
        directory.get("mallory@example.com")
    # Replacing a broken record is how it is repaired.
    assert directory.add("mallory@example.com", "pw", replace=True).username == "mallory"
    assert dict(directory.snapshot().rejected) == {}


class _Interfering:
    """A client on which another writer strikes between a read and its write."""

    def __init__(self, client, strike) -> None:
        self._client = client
        self._strike = strike

    def __getattr__(self, name):
        return getattr(self._client, name)

    def transaction(self, *args, **kwargs):
        strike, self._strike = self._strike, None
        if strike is not None:
            strike()
        return self._client.transaction(*args, **kwargs)


def test_concurrent_change_is_not_lost(directory, etcd_server):
    directory.add("alice@example.com", "old")
    racing = UserDirectory(
        _Interfering(etcd_server.client(),
                     lambda: directory.add("alice@example.com", "new", replace=True)),
        directory.prefix)
    racing.set_settings("alice@example.com", {"noanswer_timeout": 5})
    record = directory.get("alice@example.com")
    assert dict(record.settings) == {"noanswer_timeout": 5}
    assert login(directory.snapshot().ha1, "alice", "new", "example.com", MD5).ok


def test_etcd_failure_is_a_coordination_error(etcd_server):
    directory = UserDirectory(etcd_server.client(timeout=1.0), "/users-down")
    etcd_server.stop()
    try:
        with pytest.raises(CoordinationError, match="users get"):
            directory.get("alice@example.com")
    finally:
        etcd_server.start()
    assert directory.get("alice@example.com") is None
