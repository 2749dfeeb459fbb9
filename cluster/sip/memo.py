"""Bounded memo tables for header values that repeat.

The fields a worker parses on every message repeat across a call and across
calls: From and Call-ID on all six messages of a call, To on five, the
caller's Via on the INVITE and its responses, Record-Route on the responses,
Route on the in-dialog requests, and CSeq values such as ``1 INVITE`` on
nearly every call. Their parsed forms are frozen (immutable) objects, so one
parse can serve every later message carrying the same text.

A table is a plain dict that is emptied when it reaches ``LIMIT`` entries or
``BYTES`` characters of remembered text: no LRU bookkeeping on the hot path,
and a peer sending only unique values costs one insert per parse and an
occasional clear. A value longer than ``VALUE_LIMIT`` is never remembered:
values that long do not repeat in real traffic, and 4,096 distinct 30 KB
From values would otherwise hold some 120 MB per table (issue 19: every
worker grew from 59 to ~450 MB). So a table holds at most ``BYTES`` of text
plus its parsed forms, whatever it is sent. Only successful parses are
remembered; malformed values raise every time.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

LIMIT = 4096
"""Entries a table holds at most."""
VALUE_LIMIT = 1024
"""Longest text (characters) remembered."""
BYTES = 1 << 20
"""Characters of remembered text a table holds at most."""


class MemoTable(dict[str, T]):
    """A memo dict that also counts the characters of its keys (``size``)."""

    __slots__ = ("size",)

    def __init__(self) -> None:
        super().__init__()
        self.size = 0


def remember(table: MemoTable[T], value: str, parsed: T) -> T:
    size = len(value)
    if size > VALUE_LIMIT:
        return parsed
    if len(table) >= LIMIT or table.size + size > BYTES:
        table.clear()
        table.size = 0
    table[value] = parsed
    table.size += size
    return parsed


def bounded_cache(function: Callable[[str], R]) -> Callable[[str], R]:
    """``functools.lru_cache(LIMIT)`` for a function of one text, bypassed
    for texts longer than ``VALUE_LIMIT`` (so bounded in bytes too)."""
    cached = functools.lru_cache(maxsize=LIMIT)(function)

    @functools.wraps(function)
    def call(text: str) -> R:
        if len(text) > VALUE_LIMIT:
            return function(text)
        return cached(text)

    call.cache_clear = cached.cache_clear  # type: ignore[attr-defined]
    call.cache_info = cached.cache_info  # type: ignore[attr-defined]
    return call
