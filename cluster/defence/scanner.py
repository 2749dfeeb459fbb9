"""Scanner User-Agents (Kamailio secfilter's user-agent blacklist), on raw bytes.

SIPVicious and its kin announce themselves in User-Agent (RFC 3261 §20.41;
the header has no compact form). The edge does not parse messages, and this
check runs for every request, so it costs one or two substring searches:
the header name as nearly everyone writes it (``User-Agent``) or in lower
case; only when one is found is its value lowered and searched for a
blocked token, and only a match is checked to lie in the header section.
A scanner that spells the name in mixed case, or changes its User-Agent,
gets through — as it would past any User-Agent list; the rate limit and the
password-guessing bans are what hold such a one.
"""

from __future__ import annotations

import re

__all__ = ["DEFAULT_BLOCKED_AGENTS", "ScannerMatcher", "user_agent"]

DEFAULT_BLOCKED_AGENTS = ("friendly-scanner", "sipvicious", "sipcli", "VaxSIPUserAgent", "pplsip")

_NAMES = (b"\nUser-Agent", b"\nuser-agent")
_NAME_LENGTH = len(_NAMES[0])
_MEMO_LIMIT = 4096
_MEMO_VALUE = 256
"""Longest User-Agent value whose verdict is memoised."""


def _header_value(data: bytes) -> tuple[int, bytes] | None:
    """(offset, raw value line) of the first User-Agent header, or None."""
    for name in _NAMES:
        at = data.find(name)
        if at >= 0:
            start = at + _NAME_LENGTH
            stop = data.find(b"\n", start)
            return at, data[start:stop if stop >= 0 else len(data)]
    return None


class ScannerMatcher:
    __slots__ = ("tokens", "_search", "_verdicts")

    def __init__(self, tokens: tuple[str, ...]) -> None:
        self.tokens = tuple(t for t in tokens if t)
        self._search = None
        # User agents repeat (one per phone model): a value's verdict is
        # memoised, bounded so that a client rotating values cannot grow it.
        self._verdicts: dict[bytes, bool] = {}
        if self.tokens:
            self._search = re.compile(b"|".join(re.escape(t.lower().encode()) for t in self.tokens)).search

    def __bool__(self) -> bool:
        return self._search is not None

    def matches(self, data: bytes) -> bool:
        search = self._search
        if search is None:
            return False
        # The common path (a User-Agent that names no scanner, seen before)
        # is four calls into C: find, find, slice, dict lookup.
        at = data.find(b"\nUser-Agent")
        if at < 0:
            at = data.find(b"\nuser-agent")
            if at < 0:
                return False
        start = at + _NAME_LENGTH
        stop = data.find(b"\n", start)
        value = data[start:stop] if stop >= 0 else data[start:]
        blocked = self._verdicts.get(value)
        if blocked is None:
            blocked = search(value.lower()) is not None and value.lstrip(b" \t").startswith(b":")
            verdicts = self._verdicts
            if len(value) <= _MEMO_VALUE:
                # Bounded in bytes too: a flood of distinct 60 KB values is not kept.
                if len(verdicts) >= _MEMO_LIMIT:
                    verdicts.clear()
                verdicts[value] = blocked
        if not blocked:
            return False
        # Rare from here: is this really the header, not a line of the body?
        end = data.find(b"\r\n\r\n")
        return end < 0 or at < end


def user_agent(data: bytes) -> str:
    """The User-Agent value of a raw message (first 80 bytes), for log lines."""
    found = _header_value(data)
    if found is None:
        return ""
    return found[1].lstrip(b" \t:").strip()[:80].decode("utf-8", "replace")
