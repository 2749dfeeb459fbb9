"""Cluster membership as pure values: records, snapshots, events and diffs.

DESIGN §4: every node keeps ``/<prefix>/members/<role>/<node-id>`` under an
etcd lease and every node watches the prefix. Following tooz (STYLE §4), the
etcd client is only an adapter: it turns a range response into
``MembershipView.from_kvs(revision, kvs)`` and watch events into ``Put`` /
``Delete`` values for ``MembershipView.apply``. Everything that decides what
the cluster looks like lives here, with no I/O and no clock, so

* every node derives the same view, hence the same ring, from the same etcd
  history (the ring is built from the view's workers; ``epoch = revision``);
* a view reached by applying watch events equals one read directly at the
  same revision, which is what lets a node resume a watch or re-read after a
  compaction without the cluster noticing;
* changes are diffs between two immutable snapshots (joined, left, changed),
  so the runtime reacts to exactly what changed (reconnect a link, rebuild the
  ring only when the set of workers moved).

A record that cannot be read (not JSON, wrong types, key and body disagree)
never stops the watch: it is kept out of the members and reported in
``MembershipView.rejected`` with a reason, and surfaces once in the diff.
Only ``id``, ``role`` and ``link`` are required and unknown JSON fields are
ignored, so nodes of two releases in a rolling upgrade accept the same records
and keep building identical rings. A record without ``curve_key`` is from a
release whose links are plaintext: such a node stays a member (and in the
ring), but no node of this release links to it or admits it (DESIGN §3).

Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from .ring import DEFAULT_VNODES, Ring

__all__ = [
    "BadMemberRecord", "Delete", "EDGE", "Member", "MembershipDiff", "MembershipView", "Put",
    "ROLES", "WORKER", "diff", "is_curve_key", "member_key", "members_prefix",
]

EDGE = "edge"
WORKER = "worker"
ROLES = (EDGE, WORKER)

# A Curve25519 public key in Z85 text (ZeroMQ RFC 32): 40 characters.
_CURVE_KEY = re.compile(r"[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}\Z")


def is_curve_key(text: object) -> bool:
    """A 32-byte CurveZMQ key in Z85 text (str or ASCII bytes)."""
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    return isinstance(text, str) and _CURVE_KEY.match(text) is not None


class BadMemberRecord(ValueError):
    """A key/value under the members prefix that is not a usable member record."""


def members_prefix(prefix: str) -> str:
    """The key prefix every node watches: ``/<prefix>/members/``."""
    prefix = prefix.strip("/")
    return f"/{prefix}/members/" if prefix else "/members/"


def member_key(prefix: str, role: str, node_id: str) -> str:
    """The key a node keeps under its lease: ``/<prefix>/members/<role>/<node-id>``."""
    _check_role(role)
    _check_id(node_id)
    return f"{members_prefix(prefix)}{role}/{node_id}"


def _check_role(role: object) -> str:
    if role not in ROLES:
        raise BadMemberRecord(f"role must be one of {ROLES}, got {role!r}")
    return role


def _check_id(node_id: object) -> str:
    # The id is the last path segment of the key and the ring member name.
    if not isinstance(node_id, str) or not node_id or "/" in node_id:
        raise BadMemberRecord(f"node id must be a non-empty str without '/', got {node_id!r}")
    try:
        # Ring placement hashes the UTF-8 of the id; lone surrogates (from an
        # undecodable key or a JSON escape) have none.
        node_id.encode("utf-8")
    except UnicodeEncodeError:
        raise BadMemberRecord(f"node id is not valid Unicode: {node_id!r}") from None
    return node_id


def _split_key(key: str) -> tuple[str, str]:
    parts = key.rsplit("/", 3)
    if not key.startswith("/") or len(parts) != 4 or parts[1] != "members":
        raise BadMemberRecord(f"not a member key: {key!r}")
    return _check_role(parts[2]), _check_id(parts[3])


def _text(record: dict[str, object], name: str, *, required: bool) -> str:
    value = record.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise BadMemberRecord(f"{name!r} must be a{' non-empty' if required else ''} string")
    return value


def _addresses(value: object) -> tuple[tuple[str, str], ...]:
    """The ``sip`` field: transport -> host:port, both strings."""
    if value is None:
        return ()
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise BadMemberRecord("'sip' must map transport names to host:port strings")
    return tuple(sorted(value.items()))


@dataclass(frozen=True, slots=True)
class Member:
    """One node as it describes itself in etcd.

    ``link`` is the ZeroMQ endpoint other nodes connect to (DESIGN §3),
    ``http`` its status URL (DESIGN §9), ``started`` its start time in Unix
    seconds as the node read it from its own clock (informational only: no
    decision here depends on it).
    """

    id: str
    role: str
    link: str
    http: str = ""
    pid: int = 0
    host: str = ""
    started: float = 0.0
    draining: bool = False
    """A worker leaving on purpose: out of the ring (no new calls), still a
    member so responses for its in-flight transactions reach it (DESIGN §4)."""
    link_version: int = 1
    """The highest link envelope version the node reads (cluster.link); a
    record without it is from a node that reads version 1 only."""
    curve_key: str = ""
    """The node's CurveZMQ public key (Z85) its link serves with and sends
    from (cluster.link.keys); empty for a node of a release without it."""
    sip: tuple[tuple[str, str], ...] = ()
    """An edge's advertised ``host:port`` per SIP transport (UDP, TCP, TLS,
    WS, WSS): what a worker writes in the Via and Record-Route of a request
    that leaves over that transport (RFC 5658 double Record-Route when a
    call crosses transports)."""

    def sip_address(self, transport: str) -> str:
        """The advertised ``host:port`` for ``transport`` (UDP, TCP, ...);
        empty when the edge publishes none for it."""
        return dict(self.sip).get(transport.upper(), "")

    def __post_init__(self) -> None:
        _check_id(self.id)
        _check_role(self.role)
        if not isinstance(self.link, str) or "://" not in self.link:
            raise BadMemberRecord(f"link must be a ZeroMQ endpoint, got {self.link!r}")
        if self.curve_key and not is_curve_key(self.curve_key):
            raise BadMemberRecord(f"'curve_key' must be a Z85 CurveZMQ key, got {self.curve_key!r}")

    @classmethod
    def from_kv(cls, key: bytes | str, value: bytes) -> Member:
        """Read an etcd key/value; BadMemberRecord for anything unusable."""
        if isinstance(key, bytes):
            try:
                key = key.decode("utf-8")
            except UnicodeDecodeError:
                raise BadMemberRecord(f"member key is not UTF-8: {key!r}") from None
        role, node_id = _split_key(key)
        try:
            record = json.loads(value)
        except (ValueError, TypeError, RecursionError) as error:
            # ValueError covers JSONDecodeError and UnicodeDecodeError; deep
            # nesting in hostile input raises RecursionError.
            raise BadMemberRecord(f"member record is not JSON: {error}") from None
        if not isinstance(record, dict):
            raise BadMemberRecord("member record is not a JSON object")
        if record.get("id") != node_id or record.get("role") != role:
            raise BadMemberRecord(
                f"record says {record.get('role')!r}/{record.get('id')!r} under key {key!r}")
        pid = record.get("pid", 0)
        if pid is None:
            pid = 0
        if isinstance(pid, bool) or not isinstance(pid, int) or pid < 0:
            raise BadMemberRecord(f"'pid' must be a non-negative integer, got {pid!r}")
        started = record.get("started", 0.0)
        if started is None:
            started = 0.0
        if isinstance(started, bool) or not isinstance(started, (int, float)) \
                or not math.isfinite(started):
            raise BadMemberRecord(f"'started' must be a number, got {started!r}")
        link_version = record.get("link_version", 1)
        if isinstance(link_version, bool) or not isinstance(link_version, int) or link_version < 1:
            raise BadMemberRecord(f"'link_version' must be a positive integer, got {link_version!r}")
        return cls(
            id=node_id,
            role=role,
            link=_text(record, "link", required=True),
            http=_text(record, "http", required=False),
            pid=pid,
            host=_text(record, "host", required=False),
            started=float(started),
            draining=record.get("draining") is True,
            link_version=link_version,
            curve_key=_text(record, "curve_key", required=False),
            sip=_addresses(record.get("sip")),
        )

    def to_value(self) -> bytes:
        """The JSON (UTF-8) a node writes under its member key."""
        record = {"id": self.id, "role": self.role, "link": self.link, "http": self.http,
                  "pid": self.pid, "host": self.host, "started": self.started}
        if self.draining:
            record["draining"] = True
        if self.link_version != 1:
            record["link_version"] = self.link_version
        if self.curve_key:
            record["curve_key"] = self.curve_key
        if self.sip:
            record["sip"] = dict(self.sip)
        return json.dumps(record, separators=(",", ":"), sort_keys=True).encode("utf-8")


@dataclass(frozen=True, slots=True)
class Put:
    """A watch event: ``key`` was written with ``value`` at ``revision``."""

    key: str | bytes
    value: bytes
    revision: int


@dataclass(frozen=True, slots=True)
class Delete:
    """A watch event: ``key`` was deleted (or its lease expired) at ``revision``."""

    key: str | bytes
    revision: int


Event = Put | Delete


def _key_text(key: str | bytes) -> str:
    # Keys are stored as text; an undecodable one is kept in surrogateescape
    # form so it can still be reported and later deleted.
    return key.decode("utf-8", "surrogateescape") if isinstance(key, bytes) else key


@dataclass(frozen=True, slots=True)
class MembershipView:
    """The members as of etcd ``revision``; immutable.

    ``members`` maps each member key to its record; ``rejected`` maps each key
    whose current value is unusable to the reason.
    """

    revision: int
    members: Mapping[str, Member]
    rejected: Mapping[str, str] = field(default_factory=dict)
    # Owner id -> record, for the edge's per-message "where do I send this".
    _workers: Mapping[str, Member] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        members = MappingProxyType(dict(self.members))
        object.__setattr__(self, "members", members)
        object.__setattr__(self, "rejected", MappingProxyType(dict(self.rejected)))
        object.__setattr__(self, "_workers", MappingProxyType(
            {m.id: m for k, m in sorted(members.items()) if m.role == WORKER}))

    @classmethod
    def from_kvs(cls, revision: int,
                 kvs: Iterable[tuple[str | bytes, bytes]]) -> MembershipView:
        """A view of a range read under the members prefix at ``revision``."""
        members: dict[str, Member] = {}
        rejected: dict[str, str] = {}
        for key, value in kvs:
            _admit(members, rejected, _key_text(key), value)
        return cls(revision, members, rejected)

    def apply(self, events: Iterable[Event]) -> MembershipView:
        """The view after ``events``, in etcd order.

        Events below this view's revision are already reflected in it and
        are skipped, so a watch restarted from an older revision (or one that
        overlaps the snapshot) cannot move the view backwards. Events *at* the
        view's revision are applied again: each sets its key outright, so
        replaying them onto a state that already has them changes nothing,
        and an etcd transaction (several events, one revision) delivered in
        two batches is not cut in half.
        """
        members = dict(self.members)
        rejected = dict(self.rejected)
        revision = self.revision
        applied = False
        for event in events:
            if not isinstance(event, (Put, Delete)):
                raise TypeError(f"not a membership event: {event!r}")
            if event.revision < self.revision:
                continue
            key = _key_text(event.key)
            if isinstance(event, Put):
                _admit(members, rejected, key, event.value)
            else:
                members.pop(key, None)
                rejected.pop(key, None)
            revision = max(revision, event.revision)
            applied = True
        if not applied:
            return self
        return MembershipView(revision, members, rejected)

    def workers(self) -> tuple[Member, ...]:
        """Worker records ordered by id."""
        return self._role(WORKER)

    def edges(self) -> tuple[Member, ...]:
        """Edge records ordered by id."""
        return self._role(EDGE)

    def worker(self, node_id: str) -> Member | None:
        """The record of worker ``node_id`` (e.g. a ring owner), or None."""
        return self._workers.get(node_id)

    def _role(self, role: str) -> tuple[Member, ...]:
        return tuple(sorted((m for m in self.members.values() if m.role == role),
                            key=lambda m: m.id))

    def ring(self, *, vnodes: int = DEFAULT_VNODES) -> Ring:
        """The ring of this view's workers, labelled with this view's revision.

        Building costs ~vnodes hashes per new worker (points are cached per
        member); build once per view rather than per lookup.
        """
        return Ring([w for w, m in self._workers.items() if not m.draining],
                    epoch=self.revision, vnodes=vnodes)


def _admit(members: dict[str, Member], rejected: dict[str, str], key: str,
           value: bytes) -> None:
    # The latest value of a key decides: a member whose record turns into
    # garbage is no longer a member, and a fixed record clears the rejection.
    try:
        member = Member.from_kv(key, value)
    except BadMemberRecord as error:
        members.pop(key, None)
        rejected[key] = str(error)
    else:
        members[key] = member
        rejected.pop(key, None)


@dataclass(frozen=True, slots=True)
class MembershipDiff:
    """What changed between two views, each part ordered by member key.

    ``changed`` holds ``(old, new)`` record pairs for keys present in both
    (a node restarted under the same id, a new link); ``rejected`` holds
    ``(key, reason)`` for records that became unusable.
    """

    joined: tuple[Member, ...]
    left: tuple[Member, ...]
    changed: tuple[tuple[Member, Member], ...]
    rejected: tuple[tuple[str, str], ...] = ()

    @property
    def ring_changed(self) -> bool:
        """Whether the set of workers, hence the ring, differs."""
        return any(m.role == WORKER for m in self.joined) or any(
            m.role == WORKER for m in self.left)

    def __bool__(self) -> bool:
        return bool(self.joined or self.left or self.changed or self.rejected)


def diff(old: MembershipView, new: MembershipView) -> MembershipDiff:
    """The changes that turn ``old`` into ``new``."""
    before, after = old.members, new.members
    return MembershipDiff(
        joined=tuple(after[k] for k in sorted(after.keys() - before.keys())),
        left=tuple(before[k] for k in sorted(before.keys() - after.keys())),
        changed=tuple((before[k], after[k]) for k in sorted(before.keys() & after.keys())
                      if before[k] != after[k]),
        rejected=tuple((k, reason) for k, reason in sorted(new.rejected.items())
                       if old.rejected.get(k) != reason),
    )
