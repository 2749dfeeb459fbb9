"""Bans: who is refused until when, as etcd keys and as a bounded table.

A ban is shared through etcd so that every edge (and every worker, for
users) enforces it (DESIGN §8)::

    <prefix>/bans/addr/<ip address>   a source address, dropped at the edges
    <prefix>/bans/user/<user@realm>   a digest user, refused by the workers

The value is JSON ``{"reason": "rate"|"auth", "by": node id, "until": unix
time, "detail": text}``; the key lives under an etcd lease of the ban time,
so it disappears when the ban ends without anyone deleting it.

``BanTable`` holds the bans a node enforces: a dict lookup per message,
bounded in entries so that a ban list of any size (100,000 keys written to
etcd) costs at most ``capacity`` entries; beyond it the oldest entries go
first and each one pushed out is counted.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

__all__ = ["ADDRESS", "Ban", "BanTable", "KINDS", "USER", "ban_key", "bans_prefix", "decode_ban",
           "encode_ban", "parse_ban_key"]

ADDRESS = "addr"
USER = "user"
KINDS = (ADDRESS, USER)
_MAX_SUBJECT = 256


@dataclass(frozen=True, slots=True)
class Ban:
    """``subject`` (an address or ``user@realm``) of ``kind`` refused until
    ``until`` (unix time) for ``reason`` ("rate", "auth", …), set by ``by``."""

    kind: str
    subject: str
    until: float
    reason: str
    by: str = ""
    detail: str = ""


def bans_prefix(prefix: str) -> str:
    return f"{prefix.rstrip('/')}/bans/"


def ban_key(prefix: str, kind: str, subject: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown ban kind {kind!r}")
    return f"{bans_prefix(prefix)}{kind}/{subject}"


def parse_ban_key(prefix: str, key: str | bytes) -> tuple[str, str] | None:
    """(kind, subject) of a key under the bans prefix, None for anything else."""
    text = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
    head = bans_prefix(prefix)
    if not text.startswith(head):
        return None
    kind, sep, subject = text[len(head):].partition("/")
    if not sep or kind not in KINDS or not subject or len(subject) > _MAX_SUBJECT:
        return None
    return kind, subject


def encode_ban(ban: Ban) -> bytes:
    return json.dumps({"reason": ban.reason, "by": ban.by, "until": ban.until,
                       "detail": ban.detail}, separators=(",", ":")).encode()


def decode_ban(kind: str, subject: str, value: bytes) -> Ban | None:
    """The ban a key holds, or None for a value that is not one (it is
    skipped: one bad key must not stop a node from reading the others)."""
    try:
        record = json.loads(value)
        until = float(record["until"])
    except (ValueError, TypeError, KeyError):
        return None
    if not isinstance(record, dict) or not math.isfinite(until):
        return None
    return Ban(kind, subject, until, str(record.get("reason", ""))[:32], str(record.get("by", ""))[:64],
               str(record.get("detail", ""))[:200])


class BanTable:
    """Subject → the time its ban ends, on the caller's clock; bounded.

    ``banned`` is the per-message check: one dict lookup, and an expired
    entry is removed when met."""

    __slots__ = ("capacity", "_until", "evicted", "until")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self._until: dict[str, float] = {}
        self.until = self._until.get
        """``until(subject)``: when its ban ends (possibly already past), or None."""
        self.evicted = 0
        """Bans pushed out because the table was full."""

    def __len__(self) -> int:
        return len(self._until)

    def __contains__(self, subject: str) -> bool:
        return subject in self._until

    def banned(self, subject: str, now: float) -> bool:
        until = self._until.get(subject)
        if until is None:
            return False
        if now < until:
            return True
        del self._until[subject]
        return False

    def add(self, subject: str, until: float, now: float) -> bool:
        """Ban ``subject`` until ``until``; False when it had already ended."""
        table = self._until
        if until <= now:
            table.pop(subject, None)
            return False
        if subject not in table and len(table) >= self.capacity:
            # Entries are mostly inserted in the order they end (one ban
            # time per kind), so the first one is the next to end anyway.
            del table[next(iter(table))]
            self.evicted += 1
        table[subject] = until
        return True

    def remove(self, subject: str) -> bool:
        return self._until.pop(subject, None) is not None

    def clear(self) -> None:
        self._until.clear()

    def items(self, now: float) -> list[tuple[str, float]]:
        """The bans in force at ``now``, (subject, until)."""
        return [(s, u) for s, u in self._until.items() if u > now]
