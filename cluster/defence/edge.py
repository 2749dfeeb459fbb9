"""The edge's admission check, once per inbound message, before the Call-ID.

In the spirit of Kamailio's pike, secfilter and htable bans: a message from a
banned address is dropped; a request whose User-Agent names a scanner is
dropped; a source address sending requests faster than ``rate`` per second
beyond a burst of ``burst`` is banned for ``ban_time`` seconds. Nothing is
sent back to what is dropped — an answer would tell a scanner that a SIP
server lives here, and would amplify a spoofed flood.

Cost per message: one dict lookup (bans), a comparison for responses; for
requests one regular-expression search of the header section (scanners)
and, with rate limiting on, a memoised exemption test and one bucket update.
Every table is bounded (``SourceRates``, ``BanTable``, the exemption memo).

Responses are not rate-limited (a busy trunk answers as fast as it is
asked) but are dropped from banned addresses, as pike does.
"""

from __future__ import annotations

import ipaddress
from typing import Protocol

from .bans import BanTable
from .limits import SourceRates
from .scanner import ScannerMatcher

__all__ = ["DROP_BANNED", "DROP_RATE", "DROP_SCANNER", "EdgeGuard", "GuardEvents"]

# Drop reasons, as the edge counts them (``sipcluster_drops_total{reason}``).
DROP_BANNED = "drop_banned"
DROP_RATE = "drop_rate_limited"
DROP_SCANNER = "drop_scanner"

_MEMO_LIMIT = 4096


class GuardEvents(Protocol):
    """What the node hears from the guard (logging, sharing bans)."""

    def banned(self, source: str, seconds: float, now: float) -> None:
        """``source`` exceeded the request rate and is now banned."""

    def dropped(self, reason: str, source: str, data: bytes, now: float) -> None:
        """A message from ``source`` was dropped for ``reason`` (a DROP_*)."""


class EdgeGuard:
    __slots__ = ("bans", "rates", "scanners", "ban_time", "exempt", "events", "_exempt_memo", "_until",
                 "_scan")

    def __init__(self, *, bans: BanTable, rates: SourceRates | None, scanners: ScannerMatcher,
                 ban_time: float, exempt: tuple[str, ...] = (), events: GuardEvents | None = None) -> None:
        self.bans = bans
        self.rates = rates
        self.scanners = scanners
        self.ban_time = ban_time
        self.exempt = tuple(ipaddress.ip_network(n, strict=False) for n in exempt)
        self.events = events
        self._exempt_memo: dict[str, bool] = {}
        # Bound C methods, looked up once: this runs for every message.
        self._until = bans.until
        self._scan = scanners.matches if scanners else None

    def admit(self, data: bytes, source: str, now: float) -> str | None:
        """None to let the message through, else the DROP_* reason it is dropped for."""
        until = self._until(source)
        if until is not None and (now < until or self.bans.banned(source, now)):
            reason = DROP_BANNED
        elif data.startswith(b"SIP/"):
            return None
        elif self._scan is not None and self._scan(data):
            reason = DROP_SCANNER
        else:
            rates = self.rates
            if rates is None or rates.take(source, now) or self.is_exempt(source):
                return None
            self.bans.add(source, now + self.ban_time, now)
            if self.events is not None:
                self.events.banned(source, self.ban_time, now)
            reason = DROP_RATE
        if self.events is not None:
            self.events.dropped(reason, source, data, now)
        return reason

    def dropped_banned(self, source: str, data: bytes, now: float) -> None:
        """A listener dropped messages from banned sources itself, by a
        lookup in ``bans.until`` (its fast path while a banned flood goes
        on) and counted them; the last one is reported to ``events`` (whose
        log lines are budgeted) as ``admit`` reports each of its drops."""
        if self.events is not None:
            self.events.dropped(DROP_BANNED, source, data, now)

    def is_exempt(self, source: str) -> bool:
        if not self.exempt:
            return False
        memo = self._exempt_memo
        known = memo.get(source)
        if known is None:
            try:
                address = ipaddress.ip_address(source)
            except ValueError:
                known = False
            else:
                known = any(address in network for network in self.exempt)
            if len(memo) >= _MEMO_LIMIT:
                memo.clear()
            memo[source] = known
        return known

    def lift(self, source: str) -> None:
        """An operator (or the lease) ended ``source``'s ban: forget its bucket too."""
        self.bans.remove(source)
        if self.rates is not None:
            self.rates.forget(source)
