"""Password guessing: failed digest attempts counted per user and per
source address, turned into bans (Kamailio's htable + auth failure pattern).

Each worker counts the failures it sees. Call-IDs spread a guesser's
attempts over the workers, so a worker bans once its own count reaches
``ceil(limit / workers)``: by the pigeonhole principle some worker gets
there within ``limit`` attempts in all, however they are spread, and no
etcd write is spent per failed attempt (a guesser must not be able to turn
its attempts into etcd load). Attempts that land on one worker (one
Call-ID reused) are banned sooner, after ``limit / workers``.

A window is a fixed interval starting at a key's first failure; tables are
bounded LRU dicts, so a guesser rotating through names or addresses costs
at most ``capacity`` entries.
"""

from __future__ import annotations

import math

from .bans import ADDRESS, USER

__all__ = ["AuthFailures"]


class AuthFailures:
    __slots__ = ("limit", "window", "ban_time", "capacity", "workers", "_counts")

    def __init__(self, *, limit: int, window: float, ban_time: float, capacity: int = 65536) -> None:
        self.limit = limit
        self.window = window
        self.ban_time = ban_time
        self.capacity = capacity
        self.workers = 1
        self._counts: dict[tuple[str, str], tuple[float, int]] = {}

    @property
    def threshold(self) -> int:
        """Failures one worker sees before it bans."""
        return max(1, math.ceil(self.limit / max(1, self.workers)))

    def failed(self, user: str | None, source: str | None, now: float) -> list[tuple[str, str]]:
        """Record one failed attempt; returns the (kind, subject) to ban now
        (``bans.ADDRESS`` or ``bans.USER``), at most once per window. A None
        ``user`` or ``source`` is not counted."""
        if self.limit <= 0:
            return []
        out = []
        for kind, subject in ((ADDRESS, source), (USER, user)):
            if subject and self._count((kind, subject), now) == self.threshold:
                out.append((kind, subject))
        return out

    def _count(self, key: tuple[str, str], now: float) -> int:
        counts = self._counts
        entry = counts.pop(key, None)
        if entry is None or now - entry[0] >= self.window:
            if entry is None and len(counts) >= self.capacity:
                del counts[next(iter(counts))]
            entry = (now, 0)
        entry = (entry[0], entry[1] + 1)
        counts[key] = entry
        return entry[1]

    def forget(self, kind: str, subject: str) -> None:
        """The ban ended or was lifted: count afresh."""
        self._counts.pop((kind, subject), None)
