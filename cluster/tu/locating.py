"""What the transaction user keeps while the runtime's DNS locates a next
hop (RFC 3263), sans-IO: the ``Resolve`` tickets and what waits for each,
the destinations that did not answer, and a limit on the log lines an
outage would otherwise write for every call."""

from __future__ import annotations

import itertools
from collections import Counter, deque
from collections.abc import Callable

from cluster.dns.blocklist import Blocklist
from cluster.dns.rfc3263 import Destination, Location
from cluster.dns.rfc3263 import Target as LocateTarget

from .outputs import Resolve

Located = Callable[[Location, float], None]
Send = Callable[[Destination, float], None]
SendAt = Callable[[Destination, int, float], None]
"""Send to a destination, given its place in the location."""


class Locating:
    """``ask`` makes a ``Resolve`` and remembers ``then``; ``answer`` runs it
    once with the location (a late or repeated answer finds nothing).

    A runtime may also ``deliver`` a location from wherever its lookup ran;
    it is answered at the TU's next timer run (``TransactionUser.next_deadline``
    is then due at once), whose sends the runtime already batches."""

    def __init__(self, blocklist: Blocklist, stats: Counter[str]) -> None:
        self.blocklist = blocklist
        self.stats = stats
        self._waiting: dict[int, Located] = {}
        self._tickets = itertools.count(1)
        self._delivered: deque[tuple[int, Location, object]] = deque()

    def __len__(self) -> int:
        return len(self._waiting)

    def ask(self, target: LocateTarget, seed: int, then: Located) -> Resolve:
        ticket = next(self._tickets)
        self._waiting[ticket] = then
        self.stats["dns_locate"] += 1
        return Resolve(ticket, target, seed)

    def answer(self, ticket: int, location: Location, now: float) -> None:
        then = self._waiting.pop(ticket, None)
        if then is not None:
            then(location, now)

    def deliver(self, ticket: int, location: Location, scope: object = None) -> None:
        """``scope``: whatever the runtime wants back with the answer (the
        context of the request that waited: its trace span), opaque here."""
        self._delivered.append((ticket, location, scope))

    @property
    def delivered(self) -> bool:
        return bool(self._delivered)

    def take_delivered(self) -> list[tuple[int, Location, object]]:
        """The delivered locations with their scopes, for a runtime that
        answers each (``TransactionUser.resolved``) in its own scope."""
        taken = list(self._delivered)
        self._delivered.clear()
        return taken

    def answer_delivered(self, now: float) -> None:
        delivered = self._delivered
        while delivered:
            ticket, location, _ = delivered.popleft()
            self.answer(ticket, location, now)

    def first_destination(self, send: Send, failure: str) -> Located:
        """For a stateless send (ACK, CANCEL without context): the first
        destination not blocked, else ``failure`` counted."""
        def then(location: Location, now: float) -> None:
            for destination in location.destinations:
                if not self.blocklist.blocked(destination.key, now):
                    send(destination, now)
                    return
            self.stats[failure] += 1
        return then


    def each_destination(self, send: SendAt, failure: str) -> Located:
        """For a CANCEL or an ACK sent without the INVITE's context: every
        destination the INVITE may have been sent to, with its place in
        the location (``cluster.proxy.failover.attempt_salt``); those
        blocked here are left out (they did not answer), ``failure``
        counted when none is left."""
        def then(location: Location, now: float) -> None:
            sent = False
            for position, destination in enumerate(location.destinations):
                if not self.blocklist.blocked(destination.key, now):
                    send(destination, position, now)
                    sent = True
            if not sent:
                self.stats[failure] += 1
        return then


class LogLimit:
    """One log line per subject per ``interval`` seconds: a DNS outage fails
    every call, and a line for each would flood the log; the counters count
    them all. At most ``size`` subjects are remembered."""

    def __init__(self, interval: float, size: int = 1024) -> None:
        self.interval = interval
        self.size = size
        self._last: dict[str, float] = {}

    def allow(self, subject: str, now: float) -> bool:
        last = self._last.get(subject)
        if last is not None and now - last < self.interval:
            return False
        if len(self._last) >= self.size:
            self._last.clear()
        self._last[subject] = now
        return True
