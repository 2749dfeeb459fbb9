"""Overload control: which messages a saturated node still takes (sans-IO).

Two pieces, both pure:

- ``classify(data)`` ranks one raw message from its first bytes, without a
  parse: responses, in-dialog requests (a To tag, or ACK/CANCEL, which end
  transactions already under way) and new INVITEs come first; other new
  requests, REGISTER (refreshes mostly: a binding outlives a missed refresh
  by its expiry margin), OPTIONS (keep-alive pings) and garbage last.
- ``Admission`` turns load readings (queue occupancy 0..1, queue lag in
  seconds, ``now``) into a level, and a level and a class into a verdict.

Shedding the least valuable traffic first keeps the calls under way and the
new calls completing while a flood lasts (RFC 6357 §3: a server that keeps
accepting everything collapses; the work it sheds must be the cheapest to
lose). A level rises at once with the load and falls only after the load
has stayed lower for ``hold`` seconds, so a flood's tail does not make it
flap, and the node is back to admitting everything ``hold`` seconds after
the flood ends.

Verdicts: ``ADMIT``; ``DROP`` (counted, nothing sent: garbage, and what
would be answered only to be sent again by a client that retransmits); and
``REJECT``: answer 503 with Retry-After (RFC 3261 §21.5.4) so that a caller
tries again later or elsewhere instead of the node queueing the call.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum

__all__ = [
    "ADMIT", "DROP", "REJECT", "Admission", "AdmissionPolicy", "Priority", "classify",
]


class Priority(IntEnum):
    """Classes of inbound traffic, most valuable first (lower sheds last)."""

    RESPONSE = 0
    IN_DIALOG = 1
    INVITE = 2
    OTHER = 3
    REGISTER = 4
    OPTIONS = 5
    GARBAGE = 6


ADMIT = "admit"
DROP = "drop"
REJECT = "reject"

# Level n sheds the classes whose priority is at least _SHED_FROM[n].
# Level 1: garbage and OPTIONS; 2: REGISTER and other new requests too;
# 3: new INVITEs as well. In-dialog requests and responses are never shed
# here: they finish work already accepted (RFC 6357 §3.2).
_SHED_FROM = (len(Priority), Priority.OPTIONS, Priority.OTHER, Priority.INVITE)
MAX_LEVEL = len(_SHED_FROM) - 1

# RFC 3261 §7.1 method token; the request line is "Method SP Request-URI SP SIP/2.0".
_TOKEN = re.compile(rb"[A-Za-z0-9.!%*_+`'~-]+\Z")
# The To header (compact form t, §7.3.3) with a tag parameter (§8.2.6.2,
# §12: a To tag marks a request inside a dialog).
_TO_TAG = re.compile(rb"\n(?:to|t)[ \t]*:[^\r\n]*;[ \t]*tag[ \t]*=", re.IGNORECASE)
_FIRST_LINE = 256
"""Bytes looked at for the request line: a method token longer than this is garbage."""
_ENDS_TRANSACTIONS = frozenset((b"ACK", b"CANCEL", b"BYE", b"PRACK"))


def classify(data: bytes) -> Priority:
    """The class of one raw message, from its request line and To tag only."""
    if data[:8] == b"SIP/2.0 ":
        return Priority.RESPONSE
    space = data.find(b" ", 0, _FIRST_LINE)
    if space <= 0 or not _TOKEN.match(data, 0, space) or data.find(b"SIP/2.0", space, _FIRST_LINE + space) < 0:
        return Priority.GARBAGE
    method = data[:space].upper()
    if method in _ENDS_TRANSACTIONS:
        return Priority.IN_DIALOG
    end = data.find(b"\r\n\r\n")
    if _TO_TAG.search(data, 0, end if end >= 0 else len(data)):
        return Priority.IN_DIALOG
    if method == b"INVITE":
        return Priority.INVITE
    if method == b"OPTIONS":
        return Priority.OPTIONS
    if method == b"REGISTER":
        return Priority.REGISTER
    return Priority.OTHER


@dataclass(frozen=True, slots=True)
class AdmissionPolicy:
    """When each level starts: queue occupancy (0..1) and queue lag (seconds)
    thresholds for levels 1, 2 and 3, and how long a level outlives the
    load that raised it."""

    depth: tuple[float, float, float] = (0.5, 0.75, 0.95)
    lag: tuple[float, float, float] = (0.1, 0.25, 0.5)
    hold: float = 0.5

    def __post_init__(self) -> None:
        for name in ("depth", "lag"):
            steps = getattr(self, name)
            if len(steps) != MAX_LEVEL or list(steps) != sorted(steps) or steps[0] <= 0:
                raise ValueError(f"{name} thresholds must be {MAX_LEVEL} positive increasing numbers")
        if self.hold < 0:
            raise ValueError("hold must not be negative")

    def level_for(self, depth: float, lag: float) -> int:
        level = 0
        for n in range(MAX_LEVEL):
            if depth >= self.depth[n] or lag >= self.lag[n]:
                level = n + 1
        return level


class Admission:
    """The admission state of one node: ``observe`` readings, ask ``verdict``.

    ``shed`` counts what was shed by class name (the node's metrics read it);
    ``level`` is the current level, 0 when everything is admitted.
    """

    __slots__ = ("policy", "level", "_since", "_reject", "shed")

    def __init__(self, policy: AdmissionPolicy | None = None, *, reject_to: Priority = Priority.OTHER) -> None:
        """``reject_to``: shed requests of this class or a more valuable one
        are answered 503 (REJECT); less valuable ones are dropped."""
        self.policy = policy or AdmissionPolicy()
        self.level = 0
        self._since = 0.0
        self._reject = reject_to
        self.shed: dict[str, int] = {p.name.lower(): 0 for p in Priority}

    def observe(self, now: float, *, depth: float = 0.0, lag: float = 0.0) -> int:
        """Take one reading; returns the level now in force."""
        target = self.policy.level_for(depth, lag)
        if target >= self.level:
            if target > 0:
                self._since = now
            self.level = target
        elif now - self._since >= self.policy.hold:
            # Calm for ``hold`` seconds since the last reading at this level.
            self.level = target
            self._since = now
        return self.level

    def verdict(self, priority: Priority, now: float) -> str:
        """ADMIT, DROP or REJECT for one message of ``priority`` (counted when shed)."""
        level = self.level
        if level and now - self._since >= self.policy.hold:
            # No reading since the load fell (an idle queue gives none).
            level = self.observe(now)
        if priority < _SHED_FROM[level]:
            return ADMIT
        self.shed[priority.name.lower()] += 1
        return REJECT if priority <= self._reject else DROP
