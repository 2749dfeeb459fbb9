"""The dispatcher a worker's transaction user asks: which members of a set,
in which order, for this call — from the sets and health etcd holds (fed in
by the worker) and this shard's own counts.

Active calls (the ``least-calls`` policy) are counted per shard: an INVITE
forwarded to a member is active from the moment it is sent; a non-2xx final
answer ends it, a 2xx keeps it active as a confirmed dialog until a BYE of
that Call-ID passes this shard (every request of a call comes to the shard
owning its Call-ID, so the BYE does), or ``max_call_age`` seconds pass (a
BYE that never came). Shards see disjoint, evenly hashed shares of the
calls, so each shard's counts are a sample of the cluster's: balancing them
per shard balances the whole.
"""

from __future__ import annotations

import random
from collections import Counter

from .health import ProbeSchedule, Transition
from .model import DestinationSet, HealthRecord, Member
from .policy import order

MAX_CALL_AGE = 4 * 3600.0
"""Seconds after which a confirmed call whose BYE was never seen stops counting."""
SWEEP_EVERY = 60.0


class ActiveCalls:
    """Per-shard active calls by member: ``(set, uri)`` counts."""

    __slots__ = ("counts", "_calls", "max_age", "_swept")

    def __init__(self, max_age: float = MAX_CALL_AGE) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self._calls: dict[str, dict[tuple[str, str], float]] = {}
        self.max_age = max_age
        self._swept = float("-inf")

    def begin(self, call_id: str, member: tuple[str, str], now: float) -> None:
        calls = self._calls.setdefault(call_id, {})
        if member not in calls:
            calls[member] = now
            self.counts[member] += 1

    def release(self, call_id: str, member: tuple[str, str]) -> None:
        calls = self._calls.get(call_id)
        if calls is None or calls.pop(member, None) is None:
            return
        self._drop(member)
        if not calls:
            del self._calls[call_id]

    def end_call(self, call_id: str) -> None:
        for member in self._calls.pop(call_id, {}):
            self._drop(member)

    def sweep(self, now: float) -> int:
        """Forget calls older than ``max_age`` (at most every SWEEP_EVERY s)."""
        if now - self._swept < SWEEP_EVERY:
            return 0
        self._swept = now
        old = [(cid, m) for cid, calls in self._calls.items() for m, since in calls.items()
               if now - since > self.max_age]
        for call_id, member in old:
            self.release(call_id, member)
        return len(old)

    def _drop(self, member: tuple[str, str]) -> None:
        self.counts[member] -= 1
        if self.counts[member] <= 0:
            del self.counts[member]

    def __len__(self) -> int:
        return len(self._calls)


class Dispatcher:
    """``rng`` draws the ``weighted`` policy's orders and the probes' branch
    tokens (seed it in tests).

    Probing: the worker that probes sets ``schedule`` (the members the ring
    gives it) and ``probe_via`` (the edge probes go through and its SIP
    address); the transaction user sends each due OPTIONS when its timers
    run and reports the end of each probe here; the health changes wait in
    ``changes`` for the worker to write to etcd."""

    def __init__(self, *, rng: random.Random | None = None, max_call_age: float = MAX_CALL_AGE) -> None:
        self.sets: dict[str, DestinationSet] = {}
        self.health: dict[tuple[str, str], HealthRecord] = {}
        self.active = ActiveCalls(max_call_age)
        self.rng = rng or random.Random()
        self._rotation: Counter[str] = Counter()
        self.schedule: ProbeSchedule | None = None
        self.probe_via: tuple[str, str] | None = None
        self.changes: list[Transition] = []

    # -- probing ---------------------------------------------------------------------

    def probe_ended(self, member: tuple[str, str], probe: int, status: int | None, now: float) -> None:
        """Probe ``probe`` of ``member`` ended with final ``status`` (None:
        timeout or transport error)."""
        if self.schedule is not None:
            change = self.schedule.result(member, probe, status, now)
            if change is not None:
                self.changes.append(change)

    def probe_token(self) -> str:
        """Letters and digits for a probe's branch, tag and Call-ID, never
        repeated (the generator is seeded from the OS unless a test seeds it)."""
        return f"{self.rng.getrandbits(80):020x}"

    # -- state from etcd -----------------------------------------------------------

    def put_set(self, dset: DestinationSet) -> None:
        self.sets[dset.name] = dset

    def remove_set(self, name: str) -> None:
        self.sets.pop(name, None)

    def put_health(self, member: tuple[str, str], record: HealthRecord) -> None:
        self.health[member] = record

    def remove_health(self, member: tuple[str, str]) -> None:
        self.health.pop(member, None)

    def clear(self) -> None:
        """Before a full read: what it does not contain is gone."""
        self.sets.clear()
        self.health.clear()

    def is_up(self, name: str, member: Member) -> bool:
        record = self.health.get((name, member.uri))
        return record is None or record.up

    # -- choosing ---------------------------------------------------------------------

    def choose(self, name: str, call_id: str) -> list[Member] | None:
        """The members to try for this call, first choice first; [] when
        none is up, None for an unknown set."""
        dset = self.sets.get(name)
        if dset is None:
            return None
        rotation = self._rotation[name]
        self._rotation[name] = rotation + 1
        active = {uri: n for (set_name, uri), n in self.active.counts.items() if set_name == name} \
            if dset.policy == "least-calls" else None
        return order(dset, lambda m: self.is_up(name, m), call_id, rotation=rotation, rng=self.rng,
                     active=active)
