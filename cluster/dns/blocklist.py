"""Destinations that did not answer, kept out of use for a while (RFC 3263
§4.3: a client that found a server unreachable tries the next one; having
learnt that, it need not wait for the same timeout on every new request).
Sans-IO: time is a parameter."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

Key = tuple[str, str, int]
"""(transport, host, port)"""


class Blocklist:
    def __init__(self, block_time: float, *, limit: int = 4096,
                 count: Callable[[str], None] | None = None) -> None:
        self.block_time = block_time
        self.limit = limit
        self._until: OrderedDict[Key, float] = OrderedDict()
        self._count = count or (lambda event: None)

    def __len__(self) -> int:
        return len(self._until)

    def block(self, key: Key, now: float) -> None:
        if self.block_time <= 0:
            return
        self._until.pop(key, None)
        self._until[key] = now + self.block_time
        self._count("dns_destination_blocked")
        while len(self._until) > self.limit:
            self._until.popitem(last=False)

    def blocked(self, key: Key, now: float) -> bool:
        until = self._until.get(key)
        if until is None:
            return False
        if until <= now:
            del self._until[key]
            return False
        return True

    def remaining(self, key: Key, now: float) -> float:
        until = self._until.get(key)
        return 0.0 if until is None else max(0.0, until - now)
