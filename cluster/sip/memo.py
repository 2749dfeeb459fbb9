"""Bounded memo tables for header values that repeat.

The fields a worker parses on every message repeat across a call and across
calls: From and Call-ID on all six messages of a call, To on five, the
caller's Via on the INVITE and its responses, Record-Route on the responses,
Route on the in-dialog requests, and CSeq values such as ``1 INVITE`` on
nearly every call. Their parsed forms are frozen (immutable) objects, so one
parse can serve every later message carrying the same text.

A table is a plain dict that is emptied when it reaches ``LIMIT`` entries:
no LRU bookkeeping on the hot path, memory bounded, and a peer sending only
unique values costs one insert per parse and an occasional clear. Only
successful parses are remembered; malformed values raise every time.
"""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")

LIMIT = 4096


def remember(table: dict[str, T], value: str, parsed: T) -> T:
    if len(table) >= LIMIT:
        table.clear()
    table[value] = parsed
    return parsed
