"""Destination sets in etcd, read and changed synchronously (``sipcluster dispatcher``).

A set is one key, changed by compare-and-swap on its value, so two operators
adding members at once both land. Removing a member or a set removes its
health records too; every worker's feed sees the change.
"""

from __future__ import annotations

import builtins

from cluster.coordination.directory import EtcdDirectory

from .model import (
    DestinationSet, HealthRecord, InvalidSet, Member, decode_health, decode_set, encode_set,
    health_key, health_prefix, parse_health_key, set_key, sets_prefix,
)

ATTEMPTS = 10


class DispatcherDirectory(EtcdDirectory):
    __slots__ = ()
    NAME = "dispatcher"

    def get(self, name: str) -> DestinationSet | None:
        value, _ = self._call("get", "get", set_key(self.prefix, name))
        return None if value is None else decode_set(value)

    def add(self, name: str, uri: str, *, priority: int = 0, weight: int = 1,
            policy: str | None = None) -> DestinationSet:
        """Add ``uri`` to set ``name`` (made with ``policy``, default
        ``priority``, when new), or change its priority and weight; ``policy``
        given for an existing set changes it. InvalidSet for bad values."""
        member = Member.make(uri, priority, weight)
        key = set_key(self.prefix, name)
        for _ in range(ATTEMPTS):
            value, _ = self._call("add", "get", key)
            if value is None:
                dset = DestinationSet.make(name, policy or "priority", (member,))
                if self._call("add", "put_if_not_exists", key, encode_set(dset)):
                    return dset
                continue
            old = decode_set(value)
            members = tuple(m for m in old.members if m.uri != member.uri)
            # A changed member keeps its place in the list (priority order ties).
            at = next((i for i, m in enumerate(old.members) if m.uri == member.uri), len(members))
            dset = DestinationSet.make(name, policy or old.policy, members[:at] + (member,) + members[at:])
            if self._call("add", "replace", key, value, encode_set(dset)):
                return dset
        raise InvalidSet(f"set {name!r} kept changing while being updated; try again")

    def remove(self, name: str, uri: str | None = None) -> bool:
        """Remove member ``uri`` of set ``name``, or the whole set; False when
        there was no such set or member."""
        key = set_key(self.prefix, name)
        if uri is None:
            self._call("remove", "delete_prefix", f"{health_prefix(self.prefix)}{name}/")
            return bool(self._call("remove", "delete", key))
        canonical = Member.make(uri).uri
        for _ in range(ATTEMPTS):
            value, _ = self._call("remove", "get", key)
            if value is None:
                return False
            old = decode_set(value)
            if old.member(canonical) is None:
                return False
            members = tuple(m for m in old.members if m.uri != canonical)
            if not members:
                # The last member: the set goes (a set with no member routes nowhere).
                if not self._call("remove", "delete", key):
                    continue
            elif not self._call("remove", "replace", key, value,
                                encode_set(DestinationSet(name, old.policy, members))):
                continue
            self._call("remove", "delete", health_key(self.prefix, name, canonical))
            return True
        raise InvalidSet(f"set {name!r} kept changing while being updated; try again")

    def list(self) -> builtins.list[tuple[DestinationSet, dict[str, HealthRecord]]]:
        """Every usable set by name, with the health records of its members."""
        health: dict[tuple[str, str], HealthRecord] = {}
        for value, meta in self._call("list", "get_prefix", health_prefix(self.prefix)):
            member = parse_health_key(self.prefix, meta.key)
            record = decode_health(value) if member is not None else None
            if member is not None and record is not None:
                health[member] = record
        out = []
        for value, _ in self._call("list", "get_prefix", sets_prefix(self.prefix)):
            try:
                dset = decode_set(value)
            except InvalidSet:
                continue
            out.append((dset, {m.uri: health[(dset.name, m.uri)] for m in dset.members
                               if (dset.name, m.uri) in health}))
        return sorted(out, key=lambda entry: entry[0].name)
