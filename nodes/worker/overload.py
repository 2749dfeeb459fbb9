"""The worker's admission check, once per inbound envelope, before the parse.

A saturated worker answers 503 with Retry-After (RFC 3261 §21.5.4) instead
of queueing: when the link lag (the edge's receive stamp against this
worker's clock, so a worker's own backlog) passes ``cluster.defence.admission`` thresholds, new requests of the
shed classes are answered at once, from their raw bytes, and garbage is
dropped. In-dialog requests and responses are always processed: they finish
calls already accepted.

Bounded queues make the lag a short one: the worker's link inbox holds at
most ``LINK_HWM`` frames (``Inbox``), so after a flood the backlog is gone
within a second and calls complete again (issue 19: an unbounded backlog
made it 25 s).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING

from cluster.defence.admission import ADMIT, DROP, Admission, AdmissionPolicy, Priority, classify
from cluster.link import Envelope
from cluster.sip import ParseError, reject_malformed

if TYPE_CHECKING:  # pragma: no cover
    from .link import EdgeLinks

__all__ = ["LINK_HWM", "RETRY_AFTER", "WorkerAdmission"]

LINK_HWM = 256
"""Frames (each up to 32 SIP messages) the worker's link inbox holds."""
RETRY_AFTER = "2"
"""Seconds a caller refused for overload is asked to wait (§20.33)."""


class WorkerAdmission:
    """``worker.overload_lag`` as an ``Admission``, fed by the link loop."""

    __slots__ = ("admission", "stats", "server", "links")

    def __init__(self, overload_lag: float, stats: Counter[str], server: str, links: EdgeLinks) -> None:
        """``links``: where a 503 goes (through the edge the request came from)."""
        # The lag thresholds: a quarter, half and all of overload_lag (the
        # link lag is the backlog's own measure; no depth reading is given).
        self.admission = Admission(
            AdmissionPolicy(lag=(overload_lag / 4, overload_lag / 2, overload_lag)),
            # Every shed request is answered; garbage has nothing to answer.
            reject_to=Priority.OPTIONS)
        self.stats = stats
        self.server = server
        self.links = links

    @property
    def level(self) -> int:
        return self.admission.level

    def admit(self, env: Envelope, now: float) -> bool:
        """True to process ``env``; False when it was shed (answered 503 or dropped)."""
        admission = self.admission
        lag = (time.time_ns() - env.ts_ns) / 1e9 if env.ts_ns else 0.0
        if admission.observe(now, lag=lag) == 0:
            return True
        verdict = admission.verdict(classify(env.data), now)
        if verdict is ADMIT:
            return True
        if verdict is DROP:
            self.stats["drop_shed"] += 1
            return False
        answer = reject_malformed(env.data, ParseError("overloaded", 503), server=self.server,
                                  headers=(("Retry-After", RETRY_AFTER),))
        if answer is None:
            self.stats["drop_shed"] += 1
        else:
            self.stats["shed_rejected"] += 1
            self.links.send(env.edge, env.transport, env.peer, env.local, env.conn, answer, env.ts_ns)
        return False

