"""The per-node DNS cache, sans-IO: answers by (name, type), each for its
TTL — negative answers too (RFC 2308 §5) — bounded in entries and in bytes,
least recently used out first. Failures (timeout, SERVFAIL) are not cached
here: the runtime retries them on the next call (RFC 2308 §7.1 allows a
short cache of them; not doing so keeps a recovered server usable at once).
Time is a parameter."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from .records import Answer, Query


@dataclass(frozen=True, slots=True)
class CacheLimits:
    entries: int = 10_000
    bytes: int = 8 * 1024 * 1024
    max_ttl: float = 86_400.0
    """No answer is kept longer, whatever its TTL says (RFC 2181 §8 caps TTLs)."""


class DnsCache:
    def __init__(self, limits: CacheLimits = CacheLimits(),
                 count: Callable[[str], None] | None = None) -> None:
        self.limits = limits
        self._entries: OrderedDict[Query, tuple[float, Answer, int]] = OrderedDict()
        self.bytes = 0
        self._count = count or (lambda event: None)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, query: Query, now: float) -> Answer | None:
        entry = self._entries.get(query)
        if entry is None:
            self._count("dns_cache_miss")
            return None
        expires, answer, size = entry
        if expires <= now:
            # RFC 1035 §3.2.1: past its TTL a record must not be used.
            self._drop(query, size)
            self._count("dns_cache_expired")
            return None
        self._entries.move_to_end(query)
        self._count("dns_cache_hit")
        return answer

    def put(self, query: Query, answer: Answer, now: float) -> None:
        if answer.failed or answer.ttl <= 0:
            return
        size = answer.size() + len(query.name)
        limits = self.limits
        if size > limits.bytes:
            self._count("dns_cache_too_large")
            return
        old = self._entries.pop(query, None)
        if old is not None:
            self.bytes -= old[2]
        self._entries[query] = (now + min(answer.ttl, limits.max_ttl), answer, size)
        self.bytes += size
        while len(self._entries) > limits.entries or self.bytes > limits.bytes:
            victim, (_, _, victim_size) = next(iter(self._entries.items()))
            self._drop(victim, victim_size)
            self._count("dns_cache_evicted")

    def _drop(self, query: Query, size: int) -> None:
        del self._entries[query]
        self.bytes -= size
