"""Sharding, sans-IO: the Call-ID hash ring and etcd membership as pure values.

    >>> from cluster.sharding import MembershipView, Put
    >>> view = MembershipView.from_kvs(revision, kvs).apply(events)
    >>> ring = view.ring()               # workers only, epoch = view.revision
    >>> ring.owner(call_id)              # worker id; EmptyRing if no workers
    >>> view.worker(ring.owner(call_id)).link

Nothing here does I/O or reads a clock (DESIGN §4, STYLE §4).
"""

from .membership import (
    EDGE, ROLES, WORKER, BadMemberRecord, Delete, Member, MembershipDiff, MembershipView, Put,
    diff, member_key, members_prefix,
)
from .ring import DEFAULT_VNODES, EmptyRing, Ring, key_position

__all__ = [
    "BadMemberRecord", "DEFAULT_VNODES", "Delete", "EDGE", "EmptyRing", "Member",
    "MembershipDiff", "MembershipView", "Put", "ROLES", "Ring", "WORKER", "diff",
    "key_position", "member_key", "members_prefix",
]
