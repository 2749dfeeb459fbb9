"""The one task that sleeps until the transaction user's next deadline.

The aioquic shape: the sans-IO core offers one absolute deadline, the adapter
sleeps until it and then hands the core ``now``. Handling a message may bring
a deadline earlier than the one being slept until (a new INVITE's Timer A);
``kick`` wakes the task then, and only then.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import trio


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
        deadline = self._next_deadline()
        return math.inf if deadline is None else deadline

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
        has appeared. Most messages only add later deadlines (Timer K, J, ...
        run for seconds), so they cost two heap peeks, not a task switch."""
        if self._deadline() < self._wake:
            self._kick.set()

    @property
    def kicked(self) -> bool:
        """Whether a wake-up is pending (tests and diagnostics)."""
        return self._kick.is_set()
