"""How a set's members are ordered for one call.

The first member gets the request; the rest are its failover order (a 503,
a timeout or a transport error moves the call to the next one, within the
same call). Members that are down are left out entirely. Every policy is a
pure function of its inputs: the Call-ID, this shard's round-robin position,
a seeded random generator and this shard's active-call counts.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Mapping, Sequence

from .model import DestinationSet, Member


def order(dset: DestinationSet, alive: Callable[[Member], bool], call_id: str, *,
          rotation: int = 0, rng: random.Random | None = None,
          active: Mapping[str, int] | None = None) -> list[Member]:
    members = [m for m in dset.members if alive(m)]
    if len(members) < 2:
        return members
    policy = dset.policy
    if policy == "hash":
        return by_hash(members, call_id)
    if policy == "round-robin":
        start = rotation % len(members)
        return members[start:] + members[:start]
    if policy == "weighted":
        return by_weight(members, rng or random.Random(call_id))
    if policy == "least-calls":
        counts = active or {}
        position = {m.uri: i for i, m in enumerate(members)}
        return sorted(members, key=lambda m: (counts.get(m.uri, 0), m.priority, position[m.uri]))
    # "priority": stable, so equal priorities keep the listed order.
    return sorted(members, key=lambda m: m.priority)


def by_hash(members: Sequence[Member], call_id: str) -> list[Member]:
    """Rendezvous (highest random weight) hashing: the same Call-ID gives the
    same order on every shard and in every process (no salted ``hash()``),
    and a member going down moves only the calls it had."""
    def score(member: Member) -> bytes:
        return hashlib.blake2b(f"{call_id}\x00{member.uri}".encode(), digest_size=8).digest()
    return sorted(members, key=score, reverse=True)


def by_weight(members: Sequence[Member], rng: random.Random) -> list[Member]:
    """Weighted random order without replacement (Efraimidis-Spirakis: each
    member draws ``u ** (1 / weight)``, highest first), so the first member
    is chosen with probability weight / total and so on down the order, in
    O(n log n) rather than a pass over what is left per pick; weight-0
    members come last, in the listed order."""
    keyed = sorted(((rng.random() ** (1.0 / m.weight), i) for i, m in enumerate(members) if m.weight > 0),
                   reverse=True)
    return [members[i] for _, i in keyed] + [m for m in members if m.weight == 0]
