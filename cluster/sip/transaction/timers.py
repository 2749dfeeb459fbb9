"""Transaction timers: their values and the queue that fires them.

Every timer of RFC 3261 §17 (Table 4) is derived here, in one place, from
T1, T2 and T4, together with RFC 6026's Timers L and M. Reliable transports
get no retransmission timers (A, E, G) and zero linger timers (D, I, J, K):
the transaction ends as soon as it would start waiting for stray copies.

The queue is a binary heap with lazy deletion: stopping a timer only drops
the transaction's reference to the heap entry, and the entry is discarded
when it reaches the top (or at an occasional compaction). A tick therefore
costs O(expired · log n), independent of how many transactions are alive.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar


TIMER_C = 181.0
"""Timer C, the one definition (RFC 3261 §16.6 step 11: "MUST be greater
than 3 minutes"): the INVITE client transaction's and, through the worker's
TimerConfig, the proxy response context's (§16.8)."""


@dataclass(frozen=True, slots=True)
class TimerConfig:
    """Base values of the transaction timers, in seconds."""

    t1: float = 0.5
    """RTT estimate (RFC 3261 §17.1.1.1); A, E and G start here and B, F, H,
    J, L and M are 64·T1."""
    t2: float = 4.0
    """Ceiling of the non-INVITE request and INVITE response retransmission
    intervals (§17.1.2.2, §17.2.1)."""
    t4: float = 5.0
    """Maximum time a message stays in the network: Timers I and K."""
    d: float = 32.0
    """Timer D on unreliable transports: "at least 32 seconds" (§17.1.1.2),
    long enough to absorb the last retransmission of a non-2xx response."""
    c: float | None = TIMER_C
    """Timer C (§16.6 step 11, "greater than 3 minutes") for an INVITE client
    transaction that has provisional responses only; on expiry the TU is told
    (§16.8) and the transaction waits at most 64·T1 more for the final
    response to the CANCEL it sends (§9.1). None: never, for UAs whose TU
    bounds ringing itself."""

    def __post_init__(self) -> None:
        if not 0 < self.t1 <= self.t2 or self.t4 <= 0 or self.d < 0:
            raise ValueError("timer values must be positive with T1 <= T2")
        if self.c is not None and self.c <= 0:
            raise ValueError("Timer C must be positive")

    def for_transport(self, reliable: bool) -> Timers:
        """The timer values for transactions over a reliable or unreliable transport."""
        t1 = self.t1
        sixty_four = 64 * t1
        if reliable:
            return Timers(
                a=None, b=sixty_four, c=self.c, d=0.0, e=None, f=sixty_four, g=None,
                h=sixty_four, i=0.0, j=0.0, k=0.0, l=sixty_four, m=sixty_four, t2=self.t2,
            )
        return Timers(
            a=t1, b=sixty_four, c=self.c, d=self.d, e=t1, f=sixty_four, g=t1,
            h=sixty_four, i=self.t4, j=sixty_four, k=self.t4, l=sixty_four, m=sixty_four,
            t2=self.t2,
        )


@dataclass(frozen=True, slots=True)
class Timers:
    """Durations for one transport class (RFC 3261 Table 4, RFC 6026 §7).

    None: the timer is not used. 0: the state is left at once.
    """

    a: float | None  # INVITE request retransmit, doubles without cap (§17.1.1.2)
    b: float  # INVITE transaction timeout (§17.1.1.2)
    c: float | None  # proxy INVITE timeout after a provisional response (§16.6)
    d: float  # wait for response retransmits, client INVITE (§17.1.1.2)
    e: float | None  # non-INVITE request retransmit, capped at T2 (§17.1.2.2)
    f: float  # non-INVITE transaction timeout (§17.1.2.2)
    g: float | None  # INVITE response retransmit, capped at T2 (§17.2.1)
    h: float  # wait for ACK receipt (§17.2.1)
    i: float  # wait for ACK retransmits (§17.2.1)
    j: float  # wait for non-INVITE request retransmits (§17.2.2)
    k: float  # wait for response retransmits, client non-INVITE (§17.1.2.2)
    l: float  # noqa: E741 - Timer L (RFC 6026 §7.1): wait for INVITE retransmits after a 2xx, server
    m: float  # wait for 2xx retransmits, client INVITE (RFC 6026 §7.2)
    t2: float  # retransmission interval ceiling


class TimerOwner(Protocol):
    """A transaction holds at most two armed timers, one per slot: the
    retransmission timer (A, E, G) and the state timer (the others)."""

    _retransmit: TimerEntry | None
    _timeout: TimerEntry | None


TimerEntry = tuple[float, int, object, str]
"""A queue entry ``(deadline, seq, owner, name)``, held by its owner in a slot."""

_Owner = TypeVar("_Owner", bound=TimerOwner)


def _live(entry: tuple[float, int, TimerOwner, str]) -> bool:
    owner = entry[2]
    return owner._retransmit is entry or owner._timeout is entry


# Compaction rebuilds the heap once abandoned entries outnumber live ones; the
# O(n) rebuild is paid for by the n/2 stops that preceded it.
_COMPACT_MIN = 4096


class TimerQueue(Generic[_Owner]):
    """Deadlines of all transactions. Entries are ``(deadline, seq, owner,
    name)``; an entry is live while its owner still holds it in a slot."""

    __slots__ = ("_heap", "_seq", "_stale")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Owner, str]] = []
        self._seq = itertools.count()
        self._stale = 0

    def __len__(self) -> int:
        """Armed timers."""
        return len(self._heap) - self._stale

    def push(self, deadline: float, owner: _Owner, name: str) -> TimerEntry:
        entry = (deadline, next(self._seq), owner, name)
        heapq.heappush(self._heap, entry)
        return entry

    def abandon(self) -> None:
        """An owner dropped an entry that is still in the heap."""
        self._stale += 1
        if self._stale > _COMPACT_MIN and self._stale * 2 > len(self._heap):
            heap = [entry for entry in self._heap if _live(entry)]
            heapq.heapify(heap)
            self._heap = heap
            self._stale = 0

    def expired(self, now: float) -> Iterator[tuple[_Owner, str]]:
        """Pop every live entry due at ``now``, clearing its owner's slot
        first so the handler may arm that slot again."""
        pop = heapq.heappop
        while True:
            # Re-read: a handler's abandon() may have compacted the heap.
            heap = self._heap
            if not heap or heap[0][0] > now:
                return
            entry = pop(heap)
            owner = entry[2]
            if owner._retransmit is entry:
                owner._retransmit = None
            elif owner._timeout is entry:
                owner._timeout = None
            else:
                self._stale -= 1
                continue
            yield owner, entry[3]

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap:
            entry = heap[0]
            if _live(entry):
                return entry[0]
            heapq.heappop(heap)
            self._stale -= 1
        return None
