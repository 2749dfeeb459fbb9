"""The edge's side of the defences (DESIGN §8): builds the ``EdgeGuard``
from the configuration, logs what it drops within a budget, shares the
bans it makes through etcd and enforces the bans etcd holds.

Rate bans made here are shared (``BanPublisher``): every edge then drops the
source, and ``sipcluster bans list`` shows it and ``bans del`` lifts it
everywhere. The write budget keeps a flood of sources from turning into a
flood of etcd writes; a ban the budget refuses holds on this edge only.
"""

from __future__ import annotations

import logging
import time

from cluster.config import EdgeConfig
from cluster.defence import ADDRESS, Ban, BanTable, EdgeGuard, LogBudget, ScannerMatcher, SourceRates
from cluster.defence.scanner import user_agent
from cluster.defence.store import BanPublisher

log = logging.getLogger("sipcluster.edge")


def build_guard(edge: EdgeConfig, events: EdgeDefenceEvents) -> EdgeGuard:
    rates = SourceRates(edge.rate_limit, edge.rate_burst, edge.rate_sources) if edge.rate_limit > 0 else None
    return EdgeGuard(bans=BanTable(edge.max_bans), rates=rates, scanners=ScannerMatcher(edge.user_agent_block),
                     ban_time=edge.rate_ban_time, exempt=edge.rate_exempt, events=events)


class EdgeDefenceEvents:
    """``GuardEvents`` for an edge: counts, budgeted log lines, shared bans."""

    def __init__(self, node_id: str, stats, rate_limit: float, publisher: BanPublisher | None) -> None:
        self.node_id = node_id
        self.stats = stats
        self.rate_limit = rate_limit
        self.publisher = publisher
        self.budget = LogBudget()

    def banned(self, source: str, seconds: float, now: float) -> None:
        self.stats["ban_rate"] += 1
        if self.publisher is not None:
            self.publisher.offer(Ban(ADDRESS, source, now + seconds, "rate", self.node_id,
                                     f"more than {self.rate_limit:g} requests/s"))
        held = self.budget.allow("ban", now)
        if held is not None:
            log.warning("source banned: request rate above edge.rate_limit",
                        extra={"source": source, "seconds": seconds, "held_back": held})

    def dropped(self, reason: str, source: str, data: bytes, now: float) -> None:
        held = self.budget.allow(reason, now)
        if held is not None:
            log.info("message dropped by the edge defences",
                     extra={"reason": reason[5:], "source": source, "user_agent": user_agent(data),
                            "held_back": held})


class EdgeBans:
    """What the ban watch tells the edge, applied to its guard (addresses only)."""

    def __init__(self, guard: EdgeGuard) -> None:
        self.guard = guard

    def put(self, ban: Ban) -> None:
        self.guard.bans.add(ban.subject, ban.until, time.time())

    def lifted(self, kind: str, subject: str) -> None:
        self.guard.lift(subject)

    def reset(self) -> None:
        self.guard.bans.clear()
