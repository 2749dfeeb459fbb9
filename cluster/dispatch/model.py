"""Destination sets as stored in etcd, and their health records.

A set is one key, ``/<prefix>/dispatcher/sets/<name>``, holding JSON::

    {"name": "carriers", "policy": "priority",
     "members": [{"uri": "sip:gw1.example.net:5060", "priority": 0, "weight": 10}, ...]}

A member's health is one key per member, written only by the node that
probes it, ``/<prefix>/dispatcher/health/<set>/<member uri, %-quoted>``::

    {"up": false, "status": null, "since": 1765139000.0, "by": "worker-1"}

Every worker follows both prefixes, so every shard orders a set's members
from the same health (the issue's "every shard routes the same way").
Member URIs are kept in their canonical text (``str(parse_uri(text))``), so
a branch's target names its member exactly.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from urllib.parse import quote, unquote

from cluster.sip import ParseError, SipURI, parse_uri

POLICIES = ("hash", "round-robin", "weighted", "priority", "least-calls")
"""``hash``: rendezvous hash of the Call-ID (every shard picks the same
member for a call); ``round-robin``: each shard rotates through the members;
``weighted``: random by weight (seeded); ``priority``: lowest priority value
first, in the listed order; ``least-calls``: fewest active calls on this
shard first (``dispatcher.ActiveCalls``)."""

_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")
MAX_MEMBERS = 64
MAX_FIELD = 65535


class InvalidSet(ValueError):
    """A set or member that cannot be used; the message says which part."""


@dataclass(frozen=True, slots=True)
class Member:
    uri: str
    """A sip: or sips: URI in canonical text."""
    priority: int = 0
    """Lower is tried first by the ``priority`` policy."""
    weight: int = 1
    """Relative share under the ``weighted`` policy; 0 only as a last resort."""

    @classmethod
    def make(cls, uri: str, priority: int = 0, weight: int = 1) -> Member:
        try:
            parsed = parse_uri(uri.strip())
        except ParseError as error:
            raise InvalidSet(f"member {uri!r}: {error.reason}") from None
        if not isinstance(parsed, SipURI):
            raise InvalidSet(f"member {uri!r} is not a sip: or sips: URI")
        for name, value in (("priority", priority), ("weight", weight)):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_FIELD:
                raise InvalidSet(f"member {uri!r}: {name} {value!r} is not an integer in 0..{MAX_FIELD}")
        return cls(str(parsed), priority, weight)


@dataclass(frozen=True, slots=True)
class DestinationSet:
    name: str
    policy: str
    members: tuple[Member, ...]

    @classmethod
    def make(cls, name: str, policy: str, members: tuple[Member, ...]) -> DestinationSet:
        check_name(name)
        if policy not in POLICIES:
            raise InvalidSet(f"set {name!r}: policy {policy!r} is not one of {', '.join(POLICIES)}")
        if len(members) > MAX_MEMBERS:
            raise InvalidSet(f"set {name!r}: more than {MAX_MEMBERS} members")
        uris = [m.uri for m in members]
        if len(set(uris)) != len(uris):
            raise InvalidSet(f"set {name!r}: a member is listed twice")
        return cls(name, policy, members)

    def member(self, uri: str) -> Member | None:
        for m in self.members:
            if m.uri == uri:
                return m
        return None


@dataclass(frozen=True, slots=True)
class HealthRecord:
    up: bool
    status: int | None = None
    """The last probe's final status; None for a timeout."""
    since: float = 0.0
    """Wall-clock time of the last change (informational)."""
    by: str = ""
    """The node that probes the member."""


def check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidSet(f"set name {name!r} is not 1-64 of [A-Za-z0-9._-]")


def dispatcher_prefix(prefix: str) -> str:
    prefix = prefix.strip("/")
    return f"/{prefix}/dispatcher/" if prefix else "/dispatcher/"


def sets_prefix(prefix: str) -> str:
    return dispatcher_prefix(prefix) + "sets/"


def health_prefix(prefix: str) -> str:
    return dispatcher_prefix(prefix) + "health/"


def set_key(prefix: str, name: str) -> str:
    check_name(name)
    return sets_prefix(prefix) + name


def health_key(prefix: str, name: str, uri: str) -> str:
    return f"{health_prefix(prefix)}{name}/{quote(uri, safe='')}"


def parse_health_key(prefix: str, key: str | bytes) -> tuple[str, str] | None:
    """(set, member uri) of a health key; None for a key that is not one."""
    text = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
    start = health_prefix(prefix)
    if not text.startswith(start):
        return None
    name, sep, quoted = text[len(start):].partition("/")
    if not sep or not _NAME.match(name) or not quoted:
        return None
    return name, unquote(quoted)


def encode_set(dset: DestinationSet) -> bytes:
    return json.dumps({"name": dset.name, "policy": dset.policy,
                       "members": [{"uri": m.uri, "priority": m.priority, "weight": m.weight}
                                   for m in dset.members]}, sort_keys=True).encode()


def decode_set(value: bytes) -> DestinationSet:
    """A set from its etcd value; InvalidSet for anything unusable."""
    try:
        record = json.loads(value)
    except (ValueError, RecursionError) as error:
        raise InvalidSet(f"not JSON: {error}") from None
    if not isinstance(record, dict) or not isinstance(record.get("members"), list):
        raise InvalidSet("not a set record")
    members = []
    for entry in record["members"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("uri"), str):
            raise InvalidSet("a member without a uri")
        members.append(Member.make(entry["uri"], entry.get("priority", 0), entry.get("weight", 1)))
    return DestinationSet.make(str(record.get("name")), str(record.get("policy")), tuple(members))


def encode_health(record: HealthRecord) -> bytes:
    return json.dumps({"up": record.up, "status": record.status, "since": record.since,
                       "by": record.by}, sort_keys=True).encode()


def decode_health(value: bytes) -> HealthRecord | None:
    """A health record; None when unusable (the member then counts as unknown)."""
    try:
        record = json.loads(value)
    except (ValueError, RecursionError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("up"), bool):
        return None
    status = record.get("status")
    since = record.get("since", 0.0)
    if not (status is None or (isinstance(status, int) and not isinstance(status, bool))):
        status = None
    if isinstance(since, bool) or not isinstance(since, (int, float)) or not math.isfinite(since):
        since = 0.0
    by = record.get("by")
    return HealthRecord(record["up"], status, float(since), by if isinstance(by, str) else "")
