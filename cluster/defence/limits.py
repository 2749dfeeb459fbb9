"""Bounded per-key rate state: token buckets per source address, and a
budget for log lines.

A spoofed-source flood can name every IPv4 address, so nothing here grows
with the number of sources: ``SourceRates`` keeps at most ``capacity``
buckets and forgets the oldest when a new source arrives, giving a source
seen within the last ``ACTIVE`` seconds a second chance (moved to the back)
a few times first, which approximates least-recently-seen without
reordering the table on every request. A forgotten source starts again with
a full bucket, so the bound can only make the limit more lenient, never
refuse a source that did nothing. Each check is a constant number of dict
operations; a known source costs one lookup and an in-place update.
"""

from __future__ import annotations

__all__ = ["ACTIVE", "LogBudget", "SourceRates"]

ACTIVE = 1.0
"""Seconds since its last request within which a source is spared eviction."""
_SECOND_CHANCES = 3


class SourceRates:
    """Token buckets keyed by source address (Kamailio pike's density check).

    A bucket holds at most ``burst`` tokens and gains ``rate`` per second;
    each request takes one. ``take`` is False when the bucket is empty: the
    source sent more than ``rate`` requests per second beyond its burst.
    """

    __slots__ = ("rate", "burst", "capacity", "_buckets", "evicted")

    def __init__(self, rate: float, burst: int, capacity: int) -> None:
        if rate <= 0 or burst < 1 or capacity < 1:
            raise ValueError("rate must be > 0, burst and capacity >= 1")
        self.rate = rate
        self.burst = float(burst)
        self.capacity = capacity
        self._buckets: dict[str, list[float]] = {}  # source -> [tokens, time of the last request]
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, source: str, now: float) -> bool:
        state = self._buckets.get(source)
        if state is None:
            self._admit(source, now)
            return True
        # A clock stepped back gives no tokens rather than taking some.
        elapsed = now - state[1]
        tokens = state[0] + elapsed * self.rate if elapsed > 0 else state[0]
        if tokens > self.burst:
            tokens = self.burst
        state[1] = now
        if tokens < 1.0:
            state[0] = tokens
            return False
        state[0] = tokens - 1.0
        return True

    def _admit(self, source: str, now: float) -> None:
        buckets = self._buckets
        if len(buckets) >= self.capacity:
            for chance in range(_SECOND_CHANCES + 1):
                oldest = next(iter(buckets))
                if chance < _SECOND_CHANCES and now - buckets[oldest][1] < ACTIVE:
                    buckets[oldest] = buckets.pop(oldest)  # active: to the back
                    continue
                del buckets[oldest]
                self.evicted += 1
                break
        buckets[source] = [self.burst - 1.0, now]

    def forget(self, source: str) -> None:
        """Start ``source`` afresh (its ban was lifted by an operator)."""
        self._buckets.pop(source, None)


class LogBudget:
    """At most ``lines`` log lines per ``per`` seconds for each kind of event,
    so an attack cannot flood the log; what was held back is counted and
    reported with the next line allowed."""

    __slots__ = ("lines", "per", "_windows")

    def __init__(self, lines: int = 5, per: float = 10.0) -> None:
        self.lines = lines
        self.per = per
        self._windows: dict[str, list[float]] = {}  # kind -> [window start, used, suppressed]

    def allow(self, kind: str, now: float) -> int | None:
        """None when this event must not be logged; else the number of
        events of this kind held back since the last line (usually 0)."""
        window = self._windows.get(kind)
        if window is None or now - window[0] >= self.per:
            suppressed = int(window[2]) if window is not None else 0
            self._windows[kind] = [now, 1.0, 0.0]
            return suppressed
        if window[1] < self.lines:
            window[1] += 1
            suppressed, window[2] = int(window[2]), 0.0
            return suppressed
        window[2] += 1
        return None
