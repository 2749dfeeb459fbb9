"""Credential records in etcd: HA1 hashes only, never a password (DESIGN §8).

One key per user, ``/<prefix>/users/<user>@<domain>``, holding JSON::

    {"aor": "sip:alice@example.com", "username": "alice", "realm": "example.com",
     "ha1_md5": "<32 hex>", "ha1_sha256": "<64 hex>",
     "settings": {"forward_always": "sip:bob@example.com", "noanswer_timeout": 20}}

``username`` is the Digest username (the user part, unescaped) and ``realm``
the Digest realm, the domain unless set otherwise; the two HA1 values are
``H(username:realm:password)`` for MD5 and SHA-256 (RFC 8760 §2.1), enough to
answer both challenges ``cluster.auth.digest.challenge`` sends. Changing a
realm therefore needs the password again. ``settings`` are per-user options
the application reads (call forwarding, ``FORWARD_SETTINGS``); unknown
settings and unknown JSON fields are kept, so releases can add fields.

Three layers, from pure to I/O:

* ``make_user_record`` / ``parse_user_record`` / ``user_key``: the record
  format, pure.
* ``UserCache``: a worker's in-memory copy fed by the caller (a range read,
  then ``cluster.sharding.Put`` / ``Delete`` watch events), answering
  ``ha1(username, realm, algorithm)`` for ``digest.verify`` without an etcd
  round trip per request (DESIGN §6 read-cache pattern). Pure.
* ``UserDirectory``: a small synchronous store over the project's etcd
  connection (``cluster.coordination.connection``) for the ``sipcluster
  user`` CLI and tests. etcd errors become ``CoordinationError`` there.
"""

from __future__ import annotations

import builtins
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from cluster.coordination.connection import EtcdAccess, EtcdConnection
from cluster.coordination.errors import CoordinationError
from cluster.sharding import Delete, Put
from cluster.sip.errors import ParseError
from cluster.sip.uri import SipURI, parse_uri, unescape

from .digest import MD5, SHA256, ha1

__all__ = [
    "BadUserRecord", "FORWARD_SETTINGS", "UnknownUser", "UserCache", "UserDirectory",
    "UserExists", "UserRecord", "canonical_user", "make_user_record", "parse_user_record",
    "user_key", "users_prefix", "validate_settings",
]

#: Settings holding a forwarding target URI (sip:, sips: or tel:).
FORWARD_SETTINGS = ("forward_always", "forward_busy", "forward_noanswer")
#: Upper bound for ``noanswer_timeout`` seconds; Timer C (RFC 3261 §16.6
#: step 11) ends an unanswered INVITE after about three minutes anyway.
MAX_NOANSWER_TIMEOUT = 300

_HEX = {MD5: re.compile("[0-9a-f]{32}"), SHA256: re.compile("[0-9a-f]{64}")}
_HA1_FIELDS = {MD5: "ha1_md5", SHA256: "ha1_sha256"}
_FORWARD_SCHEMES = ("sip", "sips", "tel")


class BadUserRecord(ValueError):
    """A value under the users prefix that is not a usable credential record."""


class UserExists(ValueError):
    """``UserDirectory.add`` of a user that exists, without ``replace=True``."""


class UnknownUser(LookupError):
    """An update of a user that has no record."""


# --- names and keys -----------------------------------------------------------


def _split_user(text: str) -> tuple[str, str]:
    """``(user, domain)`` in RFC 3261 §10.3 AOR form (user as written with
    escapes canonical, host lowercased), or ValueError naming the problem."""
    if not isinstance(text, str):
        raise ValueError(f"expected user@domain as text, got {type(text).__name__}")
    stripped = text.strip()
    if not stripped:
        raise ValueError("empty user: expected user@domain")
    lowered = stripped[:5].lower()
    has_scheme = lowered.startswith("sip:") or lowered.startswith("sips:")
    if "@" not in stripped:
        raise ValueError(f"{text!r} has no '@': expected user@domain")
    try:
        uri = parse_uri(stripped if has_scheme else "sip:" + stripped)
    except ParseError as error:
        raise ValueError(f"{text!r} is not a valid user@domain: {error.reason}") from None
    if not isinstance(uri, SipURI) or not uri.user:
        raise ValueError(f"{text!r} has no user part: expected user@domain")
    if uri.password is not None:
        raise ValueError(f"{text!r} must not contain a password")
    if uri.port is not None:
        raise ValueError(f"{text!r} must not have a port: credentials are per user@domain")
    if uri.params or uri.headers:
        raise ValueError(f"{text!r} must not have URI parameters or headers")
    user, _, domain = uri.aor().partition(":")[2].rpartition("@")
    if "/" in user:
        # The name is the last segment of the etcd key.
        raise ValueError(f"{text!r}: the user part must not contain '/'")
    return user, domain


def canonical_user(text: str) -> str:
    """``user@domain`` in canonical form from ``user@domain`` or a sip:/sips: AOR."""
    user, domain = _split_user(text)
    return f"{user}@{domain}"


def users_prefix(prefix: str) -> str:
    """The key prefix of every credential record: ``/<prefix>/users/``."""
    prefix = prefix.strip("/")
    return f"/{prefix}/users/" if prefix else "/users/"


def user_key(prefix: str, user_at_domain: str) -> str:
    """``/<prefix>/users/<user>@<domain>`` (the name is canonicalised first)."""
    return users_prefix(prefix) + canonical_user(user_at_domain)


# --- settings -----------------------------------------------------------------


def validate_settings(settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """A checked copy of per-user settings, or ValueError naming the problem.

    Forwarding targets must be sip:, sips: or tel: URIs and
    ``noanswer_timeout`` a number of seconds in (0, 300]; None for any of
    these means "off" and drops the entry. Other names are kept as they
    are, provided they are JSON values. Checked on write only: a record
    edited by hand in etcd is still read, and the application copes.
    """
    if settings is None:
        return {}
    if not isinstance(settings, Mapping):
        raise ValueError(f"settings must be a mapping, got {type(settings).__name__}")
    checked: dict[str, Any] = {}
    for name, value in settings.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"setting names must be non-empty strings, got {name!r}")
        if value is None and (name in FORWARD_SETTINGS or name == "noanswer_timeout"):
            continue
        if name in FORWARD_SETTINGS:
            if _setting_uri(name, value).scheme not in _FORWARD_SCHEMES:
                raise ValueError(f"{name}: {value!r} must be a sip:, sips: or tel: URI")
            value = value.strip()
        elif name == "identities":
            value = _identities(value)
        elif name == "noanswer_timeout":
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or not 0 < value <= MAX_NOANSWER_TIMEOUT:
                raise ValueError(
                    f"noanswer_timeout must be seconds in (0, {MAX_NOANSWER_TIMEOUT}], got {value!r}")
        checked[name] = value
    try:
        json.dumps(checked, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"settings must be JSON values: {error}") from None
    return checked


def _setting_uri(name: str, value: Any):
    """A setting's URI value parsed, or ValueError naming the setting."""
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a URI string, got {value!r}")
    try:
        return parse_uri(value.strip())
    except ParseError as error:
        raise ValueError(f"{name}: {value!r} is not a URI: {error.reason}") from None


def _identities(value: Any) -> list[str]:
    """The ``identities`` setting: sip: AORs (a list, or one comma-separated
    string as ``sipcluster user set`` passes it), canonicalised."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise ValueError(f"identities must be sip: AORs separated by commas, got {value!r}")
    out = []
    for item in items:
        uri = _setting_uri("identities", item)
        if not isinstance(uri, SipURI) or not uri.user:
            raise ValueError(f"identities: {item!r} must be a sip: or sips: URI with a user part")
        aor = uri.aor()
        out.append("sip:" + aor[5:] if aor.startswith("sips:") else aor)
    return out


# --- the record ---------------------------------------------------------------


def make_user_record(aor_or_user_at_domain: str, password: str, realm: str | None = None,
                     settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON object stored for a user; the password is hashed, not kept.

    ``realm`` defaults to the domain (RFC 3261 §22.1 suggests a realm that
    names the domain). ValueError for a bad name, empty password or realm.
    """
    user, domain = _split_user(aor_or_user_at_domain)
    if not isinstance(password, str) or not password:
        raise ValueError("password must be a non-empty string")
    if realm is None:
        realm = domain
    elif not isinstance(realm, str) or not realm or not realm.isprintable():
        raise ValueError(f"realm must be non-empty printable text, got {realm!r}")
    try:
        username = unescape(user)
    except ParseError as error:
        raise ValueError(f"{aor_or_user_at_domain!r}: {error.reason}") from None
    return {
        "aor": f"sip:{user}@{domain}",
        "username": username,
        "realm": realm,
        "ha1_md5": ha1(username, realm, password, MD5),
        "ha1_sha256": ha1(username, realm, password, SHA256),
        "settings": validate_settings(settings),
    }


def _encode(record: Mapping[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":"), sort_keys=True,
                      allow_nan=False).encode("utf-8")


@dataclass(frozen=True, slots=True)
class UserRecord:
    """One user's credentials and settings, as read from etcd.

    ``aor`` is ``sip:<user>@<domain>`` in RFC 3261 §10.3 canonical form;
    ``settings`` is a read-only mapping. ``raw`` keeps the whole JSON object
    so that rewriting a record (``UserDirectory.set_settings``) preserves
    fields this release does not know.
    """

    aor: str
    username: str
    realm: str
    ha1_md5: str | None
    ha1_sha256: str | None
    settings: Mapping[str, Any] = field(default_factory=dict)
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "settings", MappingProxyType(dict(self.settings)))
        object.__setattr__(self, "raw", MappingProxyType(dict(self.raw)))

    @property
    def user_at_domain(self) -> str:
        """The name in the etcd key: the AOR without its scheme."""
        return self.aor[4:]

    def ha1_for(self, algorithm: str) -> str | None:
        """The stored HA1 for ``"MD5"`` or ``"SHA-256"`` (``-sess`` names map
        to their base; any case), None if absent or the algorithm unknown."""
        lowered = algorithm.lower()
        if lowered.endswith("-sess"):
            lowered = lowered[:-5]
        if lowered == "sha-256":
            return self.ha1_sha256
        if lowered == "md5":
            return self.ha1_md5
        return None

    def owns(self, aor: str) -> bool:
        """Whether ``aor`` (canonical, e.g. ``SipURI.aor()``) is this user's.

        DESIGN §8: the authenticated user must own the AOR it registers.
        sip: and sips: forms of the same AOR both belong to the user.
        """
        if aor.startswith("sips:"):
            return aor[5:] == self.aor[4:]
        return aor == self.aor

    def may_use(self, aor: str) -> bool:
        """Whether the user may present ``aor`` (canonical) as its identity
        in From: its own AOR, or one of its ``identities`` setting (a
        shared line, a company number), RFC 3325 §5 trust decisions."""
        if self.owns(aor):
            return True
        wanted = "sip:" + aor[5:] if aor.startswith("sips:") else aor
        identities = self.settings.get("identities")
        return isinstance(identities, (list, tuple)) and wanted in identities

    def to_value(self) -> bytes:
        """The JSON (UTF-8) stored under the user's key."""
        record = dict(self.raw)
        record.update(aor=self.aor, username=self.username, realm=self.realm,
                      settings=dict(self.settings))
        for algorithm, name in _HA1_FIELDS.items():
            value = self.ha1_for(algorithm)
            if value is None:
                record.pop(name, None)
            else:
                record[name] = value
        return _encode(record)


def _text_field(record: Mapping[str, Any], name: str) -> str:
    value = record.get(name)
    if not isinstance(value, str) or not value:
        raise BadUserRecord(f"{name!r} must be a non-empty string")
    return value


def parse_user_record(value: bytes | str) -> UserRecord:
    """Read a stored record; BadUserRecord for anything unusable.

    Required: ``aor`` (a user@domain AOR), ``realm`` and at least one HA1
    as lowercase-able hex of the right length. ``username`` defaults to the
    unescaped user part. Unknown fields are kept in ``raw``.
    """
    try:
        record = json.loads(value)
    except (ValueError, TypeError, RecursionError) as error:
        raise BadUserRecord(f"user record is not JSON: {error}") from None
    if not isinstance(record, dict):
        raise BadUserRecord("user record is not a JSON object")
    aor = _text_field(record, "aor")
    try:
        user, domain = _split_user(aor)
    except ValueError as error:
        raise BadUserRecord(f"'aor': {error}") from None
    canonical_aor = f"sip:{user}@{domain}"
    username = record.get("username")
    if username is None:
        try:
            username = unescape(user)
        except ParseError as error:
            raise BadUserRecord(f"'aor': {error.reason}") from None
    elif not isinstance(username, str) or not username:
        raise BadUserRecord("'username' must be a non-empty string")
    realm = _text_field(record, "realm")
    hashes: dict[str, str | None] = {}
    for algorithm, name in _HA1_FIELDS.items():
        digest = record.get(name)
        if digest is None:
            hashes[algorithm] = None
            continue
        if not isinstance(digest, str) or _HEX[algorithm].fullmatch(digest.lower()) is None:
            raise BadUserRecord(f"{name!r} is not a {algorithm} hex digest")
        hashes[algorithm] = digest.lower()
    if hashes[MD5] is None and hashes[SHA256] is None:
        raise BadUserRecord("user record has no HA1 ('ha1_md5' or 'ha1_sha256')")
    settings = record.get("settings")
    if settings is None:
        settings = {}
    elif not isinstance(settings, dict):
        raise BadUserRecord("'settings' must be a JSON object")
    return UserRecord(canonical_aor, username, realm, hashes[MD5], hashes[SHA256],
                      settings, record)


# --- the worker's cache -------------------------------------------------------


def _key_text(key: str | bytes) -> str:
    return key.decode("utf-8", "surrogateescape") if isinstance(key, bytes) else key


def _strip_scheme(name: str) -> str:
    if name.startswith("sip:"):
        return name[4:]
    if name.startswith("sips:"):
        return name[5:]
    return name


class UserCache:
    """Credential records held in memory, fed by the caller's etcd reads.

    The runtime loads a range read of ``users_prefix(prefix)`` with ``load``
    and then passes watch events to ``apply``; lookups never touch etcd.
    Events older than the loaded revision are ignored (as in
    ``MembershipView.apply``), so a watch that overlaps the read cannot move
    the cache backwards. A value that is not a usable record (or whose key
    disagrees with its ``aor``) is left out and reported in ``rejected``.

    Lookups by Digest identity (``lookup``, ``ha1``) refuse an ambiguous
    ``(username, realm)``: two users may share one only with custom realms,
    and then neither authenticates (``conflicts()`` lists them) rather than
    one being checked against the other's password.
    """

    __slots__ = ("revision", "_records", "_logins", "_rejected")

    def __init__(self) -> None:
        self.revision = 0
        self._records: dict[str, UserRecord] = {}
        self._logins: dict[tuple[str, str], list[str]] = {}
        self._rejected: dict[str, str] = {}

    @classmethod
    def from_kvs(cls, revision: int, kvs: Iterable[tuple[str | bytes, bytes]]) -> UserCache:
        cache = cls()
        cache.load(revision, kvs)
        return cache

    def load(self, revision: int, kvs: Iterable[tuple[str | bytes, bytes]]) -> None:
        """Replace the contents with a range read at ``revision``."""
        self._records.clear()
        self._logins.clear()
        self._rejected.clear()
        for key, value in kvs:
            self._put(_key_text(key), value)
        self.revision = revision

    def apply(self, events: Iterable[Put | Delete]) -> None:
        """Apply watch events in etcd order."""
        for event in events:
            if not isinstance(event, (Put, Delete)):
                raise TypeError(f"not a watch event: {event!r}")
            if event.revision < self.revision:
                continue
            key = _key_text(event.key)
            if isinstance(event, Put):
                self._put(key, event.value)
            else:
                self._remove(key)
                self._rejected.pop(key, None)
            self.revision = max(self.revision, event.revision)

    def _put(self, key: str, value: bytes) -> None:
        self._remove(key)
        name = key.rpartition("/")[2]
        try:
            record = parse_user_record(value)
            if record.user_at_domain != name:
                raise BadUserRecord(f"record for {record.aor!r} under key {key!r}")
        except BadUserRecord as error:
            self._rejected[key] = str(error)
            return
        self._rejected.pop(key, None)
        self._records[name] = record
        self._logins.setdefault((record.username, record.realm), []).append(name)

    def _remove(self, key: str) -> None:
        name = key.rpartition("/")[2]
        record = self._records.pop(name, None)
        if record is None:
            return
        login = (record.username, record.realm)
        names = self._logins[login]
        names.remove(name)
        if not names:
            del self._logins[login]

    # -- lookups -------------------------------------------------------------

    def get(self, user_at_domain: str) -> UserRecord | None:
        """The record for a canonical ``user@domain`` or ``sip:``/``sips:`` AOR."""
        return self._records.get(_strip_scheme(user_at_domain))

    def lookup(self, username: str, realm: str) -> UserRecord | None:
        """The record a Digest ``(username, realm)`` authenticates as, if unique."""
        names = self._logins.get((username, realm))
        if names is None or len(names) != 1:
            return None
        return self._records[names[0]]

    def ha1(self, username: str, realm: str, algorithm: str) -> str | None:
        """The ``ha1`` callback of ``digest.verify``."""
        record = self.lookup(username, realm)
        return None if record is None else record.ha1_for(algorithm)

    def records(self) -> list[UserRecord]:
        """Every usable record, ordered by ``user@domain``."""
        return [self._records[name] for name in sorted(self._records)]

    @property
    def rejected(self) -> Mapping[str, str]:
        """etcd key -> why its value is not a usable record."""
        return MappingProxyType(self._rejected)

    def conflicts(self) -> list[tuple[str, str, tuple[str, ...]]]:
        """``(username, realm, users)`` for every ambiguous Digest identity."""
        return sorted((u, r, tuple(sorted(names)))
                      for (u, r), names in self._logins.items() if len(names) > 1)

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, user_at_domain: object) -> bool:
        return isinstance(user_at_domain, str) and _strip_scheme(user_at_domain) in self._records


# --- the store ----------------------------------------------------------------

# Optimistic read-modify-write attempts before giving up on a busy key.
_CAS_ATTEMPTS = 8


class UserDirectory:
    """Credential records in etcd, read and written synchronously.

    For the ``sipcluster user add|del|list|set`` CLI and tests; workers read
    through ``UserCache`` instead. ``etcd`` is an ``EtcdConnection``, an
    ``EtcdAccess`` or (tests) an etcd3 client. Names are accepted as
    ``user@domain`` or a sip:/sips: AOR and canonicalised (ValueError for
    bad input). etcd failures raise ``CoordinationError``.
    """

    __slots__ = ("_connection", "prefix")

    def __init__(self, etcd: EtcdConnection | EtcdAccess | Any, prefix: str) -> None:
        if isinstance(etcd, EtcdAccess):
            etcd = EtcdConnection(etcd)
        elif not isinstance(etcd, EtcdConnection):
            client = etcd
            etcd = EtcdConnection(lambda: client)
        self._connection = etcd
        self.prefix = prefix

    def close(self) -> None:
        self._connection.close()

    def _call(self, op: str, method: str, *args: Any) -> Any:
        return self._connection.call(f"users {op}", method, *args)

    def _update(self, op: str, key: str, change: Callable[[bytes | None], bytes]) -> bytes:
        """Write ``change(current value)`` unless the key moved meanwhile; retry."""
        transactions = self._connection.run(f"users {op}", self._connection.client).transactions
        for _ in range(_CAS_ATTEMPTS):
            current, meta = self._call(op, "get", key)
            value = change(current)
            if current is None:
                guard = transactions.create(key) == 0
            else:
                guard = transactions.mod(key) == meta.mod_revision
            done, _ = self._call(op, "transaction", [guard], [transactions.put(key, value)], [])
            if done:
                return value
        raise CoordinationError(f"users {op}: {key} kept changing; try again")

    def add(self, user_at_domain: str, password: str, realm: str | None = None,
            settings: Mapping[str, Any] | None = None, *, replace: bool = False) -> UserRecord:
        """Create a user; with ``replace=True`` also overwrite one (a password
        or realm change), keeping its settings unless ``settings`` is given.
        Raises UserExists if the user exists and ``replace`` is false."""
        name = canonical_user(user_at_domain)
        fresh = make_user_record(name, password, realm, settings)
        key = users_prefix(self.prefix) + name
        if not replace:
            if not self._call("add", "put_if_not_exists", key, _encode(fresh)):
                raise UserExists(f"user {name} already exists")
            return parse_user_record(_encode(fresh))

        def change(current: bytes | None) -> bytes:
            record = dict(fresh)
            if current is not None:
                try:
                    old = parse_user_record(current)
                except BadUserRecord:
                    pass  # replacing a broken record is how it gets fixed
                else:
                    record = {**old.raw, **fresh}
                    if settings is None:
                        record["settings"] = dict(old.settings)
            return _encode(record)

        return parse_user_record(self._update("add", key, change))

    def set_settings(self, user_at_domain: str, settings: Mapping[str, Any]) -> UserRecord:
        """Replace the user's settings (not a merge); UnknownUser if absent."""
        name = canonical_user(user_at_domain)
        checked = validate_settings(settings)

        def change(current: bytes | None) -> bytes:
            if current is None:
                raise UnknownUser(f"no user {name}")
            old = parse_user_record(current)
            record = dict(old.raw)
            record["settings"] = checked
            return _encode(record)

        return parse_user_record(self._update("set_settings", user_key(self.prefix, name), change))

    def delete(self, user_at_domain: str) -> bool:
        """Remove a user; False if there was none."""
        return bool(self._call("delete", "delete", user_key(self.prefix, user_at_domain)))

    def get(self, user_at_domain: str) -> UserRecord | None:
        """The user's record, None if absent; BadUserRecord if unreadable."""
        value, _ = self._call("get", "get", user_key(self.prefix, user_at_domain))
        return None if value is None else parse_user_record(value)

    def snapshot(self) -> UserCache:
        """Every record in one consistent read, as a cache (``rejected``
        included), at the store revision of the read."""
        response = self._call("list", "get_prefix_response", users_prefix(self.prefix))
        return UserCache.from_kvs(response.header.revision,
                                  ((kv.key, kv.value) for kv in response.kvs))

    def list(self) -> builtins.list[UserRecord]:
        """Every usable record, ordered by ``user@domain``."""
        return self.snapshot().records()
