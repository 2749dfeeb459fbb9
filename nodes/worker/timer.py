"""The one task that sleeps until the transaction user's next deadline.

The aioquic shape: the sans-IO core offers one absolute deadline, the adapter
sleeps until it and then hands the core ``now``. Handling a message may bring
a deadline earlier than the one being slept until (a new INVITE's Timer A);
``kick`` wakes the task then, and only then.

Deadlines are rounded up to a ``GRAIN`` grid, so that every timer falling in
the same slot fires in one wake-up: a call leaves four or more deadlines
behind it (Timers K, J, L and M, RFC 3261 §17 and RFC 6026 §7.1), and at a
few hundred calls/s one wake-up per deadline was hundreds of trio wake-ups a
second per worker, each an epoll round and a transaction-layer run for one
timer. A timer fires at most ``GRAIN`` late: within RFC 3261's tolerance
(the retransmission timers start at T1 = 500 ms, an estimate of the round
trip, §17.1.1.1; the others are lower bounds on how long state is kept).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import trio

GRAIN = 0.01
"""Seconds: timers due within one slot of this length fire together (at most
100 timer wake-ups a second, whatever the call rate)."""


def slot(deadline: float) -> float:
    """The end of the ``GRAIN`` slot holding ``deadline`` (infinities unchanged)."""
    if math.isinf(deadline):
        return deadline
    # max(): the product may round a hair below the deadline itself, and a
    # task woken before its deadline would find nothing due and spin.
    return max(deadline, math.ceil(deadline / GRAIN) * GRAIN)


class TimerTask:
    def __init__(self, next_deadline: Callable[[], float | None], fire: Callable[[float], None]) -> None:
        """``next_deadline``: the core's earliest deadline (None: none);
        ``fire``: run what is due at ``now``."""
        self._next_deadline = next_deadline
        self._fire = fire
        self._kick = trio.Event()
        self._wake = math.inf
        """The deadline the task sleeps until (-inf while it runs)."""

    def _deadline(self) -> float:
        """The core's earliest deadline rounded up to its slot."""
        deadline = self._next_deadline()
        return math.inf if deadline is None else slot(deadline)

    async def run(self) -> None:
        while True:
            deadline = self._wake = self._deadline()
            with trio.move_on_at(deadline):
                await self._kick.wait()
            # Awake: no kick is needed until the next deadline is computed.
            self._wake = -math.inf
            self._kick = trio.Event()
            self._fire(trio.current_time())

    def kick(self) -> None:
        """Wake the task when a deadline earlier than the one it sleeps until
        has appeared (in an earlier slot). Most messages only add later
        deadlines (Timer K, J, ... run for seconds), so they cost two heap
        peeks, not a task switch."""
        if self._deadline() < self._wake:
            self._kick.set()

    @property
    def kicked(self) -> bool:
        """Whether a wake-up is pending (tests and diagnostics)."""
        return self._kick.is_set()
