"""Member health from OPTIONS probes: a state machine with thresholds, and
the probe schedule of the node that probes.

A member is *down* after ``down_after`` failed probes in a row and *up*
again after ``up_after`` good ones. Only a final status listed in ``alive``
is a good probe (an operator may count 404 or 403 from a gateway that
answers OPTIONS that way); any other status, a transport error and a probe
with no final response within ``timeout`` are failed probes — a timeout
never counts as alive. A member nobody has probed yet counts as up.

The schedule sends each member one OPTIONS every ``interval`` seconds, never
two at once: a probe outstanding when the next is due delays it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    interval: float = 10.0
    timeout: float = 5.0
    down_after: int = 3
    up_after: int = 2
    alive: frozenset[int] = frozenset({200})


@dataclass(frozen=True, slots=True)
class Transition:
    """``member`` changed state (``up``) after a probe that ended in ``status``
    (None: no final response)."""

    member: tuple[str, str]
    up: bool
    status: int | None


class MemberHealth:
    __slots__ = ("up", "good", "bad", "status")

    def __init__(self, up: bool = True) -> None:
        self.up = up
        self.good = 0
        self.bad = 0
        self.status: int | None = None

    def record(self, ok: bool, needed_down: int, needed_up: int) -> bool:
        """Count one probe; True when the state changed."""
        if ok:
            self.bad = 0
            self.good += 1
            if not self.up and self.good >= needed_up:
                self.up = True
                return True
        else:
            self.good = 0
            self.bad += 1
            if self.up and self.bad >= needed_down:
                self.up = False
                return True
        return False


class ProbeSchedule:
    """The probes of the members this node is assigned; ``now`` is the
    node's monotonic clock. Members are ``(set, uri)`` pairs."""

    def __init__(self, policy: HealthPolicy) -> None:
        self.policy = policy
        self.health: dict[tuple[str, str], MemberHealth] = {}
        self._next: dict[tuple[str, str], float] = {}
        self._outstanding: dict[tuple[str, str], tuple[int, float]] = {}  # member -> (probe id, deadline)
        self._ids = 0

    def assign(self, members: Iterable[tuple[tuple[str, str], bool]], now: float) -> None:
        """The members this node probes now, each with the state etcd holds
        for it (taken over from the node that probed it before); others
        are dropped with their outstanding probes."""
        wanted = dict(members)
        for member in list(self.health):
            if member not in wanted:
                del self.health[member]
                self._next.pop(member, None)
                self._outstanding.pop(member, None)
        for member, up in wanted.items():
            if member not in self.health:
                self.health[member] = MemberHealth(up)
                self._next[member] = now

    def due(self, now: float) -> list[tuple[tuple[str, str], int]]:
        """Members to probe now, each with the probe's id for ``result``."""
        out = []
        for member, at in self._next.items():
            if at <= now and member not in self._outstanding:
                self._ids += 1
                self._outstanding[member] = (self._ids, now + self.policy.timeout)
                out.append((member, self._ids))
        for member, _ in out:
            self._next[member] = now + self.policy.interval
        return out

    def result(self, member: tuple[str, str], probe: int, status: int | None,
               now: float) -> Transition | None:
        """Probe ``probe`` ended with final ``status`` (None: transport
        error or the transaction's own timeout). A late answer to a probe
        already counted as timed out is ignored."""
        outstanding = self._outstanding.get(member)
        if outstanding is None or outstanding[0] != probe:
            return None
        del self._outstanding[member]
        return self._count(member, status)

    def expire(self, now: float) -> list[Transition]:
        """Probes with no final response by their deadline count as failed."""
        late = [m for m, (_, deadline) in self._outstanding.items() if deadline <= now]
        out = []
        for member in late:
            del self._outstanding[member]
            transition = self._count(member, None)
            if transition is not None:
                out.append(transition)
        return out

    def _count(self, member: tuple[str, str], status: int | None) -> Transition | None:
        health = self.health.get(member)
        if health is None:
            return None
        health.status = status
        policy = self.policy
        ok = status is not None and status in policy.alive
        if health.record(ok, policy.down_after, policy.up_after):
            return Transition(member, health.up, status)
        return None

    def next_deadline(self) -> float | None:
        times = [at for m, at in self._next.items() if m not in self._outstanding]
        times.extend(deadline for _, deadline in self._outstanding.values())
        return min(times) if times else None
