"""The hash ring: which worker shard owns a Call-ID (DESIGN §2, §4).

Every message of a call carries the same Call-ID (RFC 3261 §8.1.1.4), so
hashing the Call-ID sends requests, responses, CANCEL, ACK and BYE of one call
to one shard without a broadcast. The edge asks the ring once per message, so
``Ring.owner`` is the hot path and is kept to one hash, one ``bisect`` and one
index.

Why consistent hashing with virtual nodes and not rendezvous (HRW) hashing:
HRW costs one hash per member per lookup (64 hashes for 64 workers, tens of
microseconds in CPython); a sorted ring of virtual-node points costs one hash
and a C-level binary search regardless of size (about 0.5 µs measured). Both
move only ~1/N of the keys when one of N members joins or leaves (DESIGN §4).

Rules that keep every node in agreement (DESIGN §4: same members, same owner):

* Keys and points are hashed with BLAKE2b (64-bit digests), never with
  Python's ``hash()``, which is salted per process.
* A member's points depend only on its own name and ``vnodes``; the ring is
  the sorted union. So the ring is a function of the member *set*, whatever
  order or container the members arrive in, and adding or removing a member
  leaves every other member's points where they were: only arcs next to the
  changed member's points change hands.
* Ties between equal points (a 64-bit collision) go to the smaller name.

A key ``k`` hashes to a 64-bit position ``h``; its owner is the member of the
first point ``p >= h``, wrapping past 2**64 - 1 to the first point. Each point
therefore owns the half-open arc ``(previous point, p]``.

Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator
from functools import lru_cache
from hashlib import blake2b

__all__ = ["DEFAULT_VNODES", "EmptyRing", "Ring", "key_position"]

#: Points per member. With 256 the relative spread of a member's share is
#: about 1/sqrt(256) ≈ 6 %, and a 64-member ring is 16 384 points: still a
#: 14-step binary search and ~10 ms to build.
DEFAULT_VNODES = 256

_SPACE = 1 << 64
# A personalisation string separates point hashes from key hashes, so a
# Call-ID that happens to spell "worker-1#3" does not sit exactly on a point.
_POINT_PERSON = b"sipcluster.ring"
_from_bytes = int.from_bytes


class EmptyRing(LookupError):
    """The ring has no members, so no shard can own the key.

    The edge should answer a request with 503 (DESIGN §3: never drop silently).
    """


def key_position(key: bytes) -> int:
    """The 64-bit ring position of ``key``: stable across processes and hosts."""
    return _from_bytes(blake2b(key, digest_size=8).digest(), "big")


@lru_cache(maxsize=256)
def _member_points(member: str, vnodes: int) -> tuple[int, ...]:
    # Cached because a membership change rebuilds the ring on every node and
    # all but one member's points are the same as before. 256 entries of 256
    # points is ~2.5 MB: room for a 64-worker cluster and its churn.
    name = member.encode("utf-8")
    return tuple(
        _from_bytes(
            blake2b(b"%s#%d" % (name, i), digest_size=8, person=_POINT_PERSON).digest(), "big"
        )
        for i in range(vnodes)
    )


class Ring:
    """An immutable consistent-hash ring of worker shard ids.

    ``epoch`` is the etcd revision the membership snapshot was taken at; it
    labels the ring and plays no part in placement: two rings with the same
    members and ``vnodes`` agree on every owner whatever their epochs.
    """

    __slots__ = ("_members", "_epoch", "_vnodes", "_points", "_owners", "_arcs", "_heirs")
    # Declared for the type checker only (no values, so no class attributes);
    # set once in __init__ through object.__setattr__.
    _members: tuple[str, ...]
    _epoch: int
    _vnodes: int
    _points: list[int]
    _owners: tuple[str, ...]
    _arcs: dict[str, int]
    _heirs: dict[str, str] | None

    def __init__(self, members: Iterable[str], *, epoch: int = 0,
                 vnodes: int = DEFAULT_VNODES) -> None:
        names = set()
        for member in members:
            if not isinstance(member, str):
                raise TypeError(f"ring members are str, not {type(member).__name__}")
            if not member:
                raise ValueError("a ring member name cannot be empty")
            names.add(member)
        if isinstance(vnodes, bool) or not isinstance(vnodes, int) or vnodes < 1:
            raise ValueError(f"vnodes must be a positive int, got {vnodes!r}")
        ordered = tuple(sorted(names))
        placed = sorted(
            (point, member) for member in ordered for point in _member_points(member, vnodes)
        )
        points: list[int] = []
        owners: list[str] = []
        last = -1
        for point, member in placed:
            if point != last:  # collision: the smaller name, sorted first, keeps it
                points.append(point)
                owners.append(member)
                last = point
        arcs = dict.fromkeys(ordered, 0)
        previous = points[-1] - _SPACE if points else 0
        for point, member in zip(points, owners):
            arcs[member] += point - previous
            previous = point
        if owners:
            # Sentinel: a position past the last point wraps to the first, and
            # bisect_left returns len(points) there, so no branch is needed.
            owners.append(owners[0])
        setattr_ = object.__setattr__
        setattr_(self, "_members", ordered)
        setattr_(self, "_epoch", epoch)
        setattr_(self, "_vnodes", vnodes)
        setattr_(self, "_points", points)
        setattr_(self, "_owners", tuple(owners))
        setattr_(self, "_arcs", arcs)
        setattr_(self, "_heirs", None)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Ring is immutable; build a new one")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Ring is immutable; build a new one")

    # -- the hot path ---------------------------------------------------------

    def owner(self, key: bytes) -> str:
        """The member that owns ``key`` (a Call-ID as bytes); EmptyRing if none."""
        try:
            return self._owners[
                bisect_left(self._points, _from_bytes(blake2b(key, digest_size=8).digest(), "big"))
            ]
        except IndexError:
            raise EmptyRing("no worker shards in the ring") from None

    # -- placement queries ----------------------------------------------------

    def placement(self) -> tuple[tuple[int, ...], tuple[str, ...]]:
        """The sorted points and each one's owner: the table a compiled
        ``owner`` (cluster/speedups/_edge.c) searches exactly as this one does."""
        return tuple(self._points), self._owners[:len(self._points)]


    @property
    def members(self) -> tuple[str, ...]:
        return self._members

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def vnodes(self) -> int:
        return self._vnodes

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, member: object) -> bool:
        return member in self._arcs

    def __iter__(self) -> Iterator[str]:
        return iter(self._members)

    def successors(self, key: bytes, n: int) -> list[str]:
        """The owner of ``key`` followed by the next distinct members clockwise.

        At most ``min(n, len(self))`` names. ``successors(key, 2)[1]`` is
        exactly the member that owns ``key`` once its owner leaves, which is
        why dialog state is replicated there (DESIGN §5).
        """
        if n <= 0:
            return []
        points, owners = self._points, self._owners
        count = len(points)
        if not count:
            raise EmptyRing("no worker shards in the ring")
        want = min(n, len(self._members))
        index = bisect_left(points, key_position(key)) % count
        found = [owners[index]]
        while len(found) < want:
            index += 1
            if index == count:
                index = 0
            member = owners[index]
            if member not in found:
                found.append(member)
        return found

    def successor_of(self, member: str) -> str | None:
        """The member that inherits the largest part of ``member``'s keys.

        When ``member`` leaves, each of its arcs passes to the next *other*
        member clockwise, so its keys spread over several heirs; this is the
        heir whose inherited arcs are longest in total (ties go to the smaller
        name). None if ``member`` is not in the ring or is its only member.
        """
        heirs = self._heirs
        if heirs is None:
            heirs = self._compute_heirs()
            object.__setattr__(self, "_heirs", heirs)
        return heirs.get(member)

    def _compute_heirs(self) -> dict[str, str]:
        points, owners = self._points, self._owners
        count = len(points)
        if len(set(owners)) < 2:
            return {}
        # heir[i]: owner of the first point after i (clockwise) whose owner is
        # not owners[i]. Filled right to left from the next point's answer;
        # the second pass settles the run of points that wraps past the top
        # and leaves no slot empty.
        heir = [""] * count
        for _ in range(2):
            for index in range(count - 1, -1, -1):
                after = index + 1 if index + 1 < count else 0
                heir[index] = owners[after] if owners[after] != owners[index] else heir[after]
        inherited: dict[str, dict[str, int]] = {}
        previous = points[-1] - _SPACE
        for index in range(count):
            gains = inherited.setdefault(owners[index], {})
            name = heir[index]
            gains[name] = gains.get(name, 0) + points[index] - previous
            previous = points[index]
        return {
            member: min(gains, key=lambda name: (-gains[name], name))
            for member, gains in inherited.items()
        }

    def share(self, member: str) -> float:
        """Fraction of the 2**64 position space owned by ``member`` (0.0 if absent)."""
        return self._arcs.get(member, 0) / _SPACE

    def shares(self) -> dict[str, float]:
        """Every member's share, in member order; the values sum to 1.0."""
        return {member: arc / _SPACE for member, arc in self._arcs.items()}

    # -- value semantics ------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Ring):
            return NotImplemented
        return (self._members, self._vnodes, self._epoch) == (
            other._members, other._vnodes, other._epoch)

    def __hash__(self) -> int:
        return hash((self._members, self._vnodes, self._epoch))

    def __repr__(self) -> str:
        return f"Ring({list(self._members)!r}, epoch={self._epoch}, vnodes={self._vnodes})"
