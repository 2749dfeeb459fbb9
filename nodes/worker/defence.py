"""The worker's side of the password-guessing defence (DESIGN §8).

Workers see failed digest attempts; ``PasswordGuard`` counts them
(``cluster.defence.AuthFailures``), publishes a ban for the source address
(enforced by every edge) or the user (enforced by every worker, which
refuses the user's requests with 403 without checking the password), and
holds the user bans that etcd reports (``cluster.defence.store.BanFeed``).
"""

from __future__ import annotations

import logging

from cluster.defence import USER, AuthFailures, Ban, BanTable, LogBudget
from cluster.defence.store import BanPublisher

log = logging.getLogger("sipcluster.worker")


class PasswordGuard:
    def __init__(self, failures: AuthFailures, users: BanTable, node_id: str, stats,
                 publisher: BanPublisher | None) -> None:
        self.failures = failures
        self.users = users
        self.node_id = node_id
        self.stats = stats
        self.publisher = publisher
        self.budget = LogBudget()

    def user_banned(self, user: str, now: float) -> bool:
        return self.users.banned(user, now)

    def failed(self, user: str | None, source: str | None, now: float) -> None:
        """One failed digest attempt by ``user`` (None: no such user) from
        ``source`` (None: a trusted source, never banned)."""
        failures = self.failures
        for kind, subject in failures.failed(user, source, now):
            ban = Ban(kind, subject, now + failures.ban_time, "auth", self.node_id,
                      f"{failures.limit} failed digest attempts within {failures.window:g} s")
            self.stats["ban_auth"] += 1
            if kind == USER:
                self.users.add(subject, ban.until, now)  # at once here; other workers through etcd
            if self.publisher is not None:
                self.publisher.offer(ban)
            held = self.budget.allow("ban", now)
            if held is not None:
                log.warning("password guessing: banned", extra={
                    "kind": kind, "subject": subject, "seconds": failures.ban_time, "held_back": held})

    # -- the ban watch (users only; the edges enforce addresses) ----------------------

    def put(self, ban: Ban, now: float) -> None:
        self.users.add(ban.subject, ban.until, now)

    def lifted(self, kind: str, subject: str) -> None:
        self.users.remove(subject)
        self.failures.forget(kind, subject)

    def reset(self) -> None:
        self.users.clear()
