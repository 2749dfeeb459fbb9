"""Bans in etcd: the watch that feeds a node's tables, the writer that
publishes new bans, and the synchronous directory the CLI uses.

Not sans-IO: the runtime side of ``cluster.defence``. Keys and values are
described in ``cluster.defence.bans``; every ban key is written under its own
lease of the ban time, so etcd removes it when the ban ends. Writes are few
by construction (a ban is published once, and ``BanPublisher`` spends at
most ``rate`` writes per second, dropping and counting the rest), so a lease
per ban costs little.
"""

from __future__ import annotations

import builtins
import logging
import math
import time
from collections.abc import Callable

import trio

from cluster.coordination.directory import EtcdDirectory
from cluster.coordination.errors import CoordinationError
from cluster.coordination.feed import follow_prefix
from cluster.sharding import Delete, Put

from .bans import KINDS, Ban, ban_key, bans_prefix, decode_ban, encode_ban, parse_ban_key
from .limits import SourceRates

__all__ = ["BanDirectory", "BanFeed", "BanPublisher"]

log = logging.getLogger("sipcluster.defence")

APPLY_CHUNK = 1000
"""Keys read per page and applied between checkpoints: a ban list of any
size is read in bounded pieces and never holds the event loop long."""


class BanFeed:
    """Keeps ``apply`` told of every ban of ``kinds`` in etcd: a range read,
    then a watch; a failed watch leads to a new read (``UserFeed``'s pattern).

    ``put(ban)`` is called for a ban written (or read), ``lifted(kind,
    subject)`` for one deleted or expired, ``reset()`` before a full read
    replaces what was known."""

    def __init__(self, store, prefix: str, *, kinds: tuple[str, ...], put: Callable[[Ban], None],
                 lifted: Callable[[str, str], None], reset: Callable[[], None],
                 stats=None) -> None:
        self.store = store
        self.prefix = prefix
        self.kinds = kinds
        self._put = put
        self._lifted = lifted
        self._reset = reset
        self.stats = stats if stats is not None else {}
        self._reading = False

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        await follow_prefix(self.store, bans_prefix(self.prefix), load=self._load, apply=self._apply,
                            failed=self._failed, page=APPLY_CHUNK, task_status=task_status)

    async def _load(self, page) -> None:
        if not self._reading:
            # The first page of a full read: it replaces what was known.
            self._reset()
            self._reading = True
        await self._events(tuple(Put(kv.key, kv.value, kv.mod_revision) for kv in page.kvs))

    async def _apply(self, events) -> None:
        self._reading = False  # the watch runs: the next full read starts afresh
        await self._events(events)

    def _failed(self, error: CoordinationError) -> None:
        self._reading = False
        log.warning("ban watch failed; reading again", extra={"error": str(error)})

    async def _events(self, events) -> None:
        for i, event in enumerate(events):
            self._event(event)
            if i % APPLY_CHUNK == APPLY_CHUNK - 1:
                await trio.lowlevel.checkpoint()
        await trio.lowlevel.checkpoint()

    def _event(self, event: Put | Delete) -> None:
        named = parse_ban_key(self.prefix, event.key)
        if named is None or named[0] not in self.kinds:
            return
        kind, subject = named
        if isinstance(event, Delete):
            self._lifted(kind, subject)
            return
        ban = decode_ban(kind, subject, event.value)
        if ban is None:
            self.stats["ban_bad_record"] = self.stats.get("ban_bad_record", 0) + 1
            return
        self._put(ban)


class BanPublisher:
    """Writes new bans to etcd, each under a lease of its time left.

    ``offer`` never waits (it is called from the per-message path): a bounded
    queue, and a write budget of ``rate`` per second; a ban that finds either
    full stays local to this node and is counted (``ban_publish_dropped``)."""

    def __init__(self, prefix: str, stats, *, queue: int = 64, rate: float = 20.0) -> None:
        self.prefix = prefix
        self.stats = stats
        self._send, self._receive = trio.open_memory_channel[Ban](queue)
        self._budget = SourceRates(rate, max(1, int(rate)), 1)

    def offer(self, ban: Ban) -> bool:
        if not self._budget.take("", time.monotonic()):
            self.stats["ban_publish_dropped"] += 1
            return False
        try:
            self._send.send_nowait(ban)
            return True
        except trio.WouldBlock:
            self.stats["ban_publish_dropped"] += 1
            return False

    async def run(self, store, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Write what ``offer`` queued through ``store`` (an ``EtcdStore``)."""
        task_status.started()
        async for ban in self._receive:
            try:
                await self.publish(store, ban)
                self.stats["ban_published"] += 1
            except CoordinationError as error:
                self.stats["ban_publish_failed"] += 1
                log.warning("could not share a ban through etcd; it holds on this node only",
                            extra={"subject": ban.subject, "error": str(error)})

    async def publish(self, store, ban: Ban) -> None:
        ttl = math.ceil(ban.until - time.time())
        if ttl < 1:
            return
        lease = await store.grant_lease(ttl)
        await store.put(ban_key(self.prefix, ban.kind, ban.subject), encode_ban(ban), lease=lease.id)


class BanDirectory(EtcdDirectory):
    """The bans in etcd, read and removed synchronously (``sipcluster bans``)."""

    __slots__ = ()
    NAME = "bans"

    def list(self, now: float | None = None) -> builtins.list[Ban]:
        """Every ban in force, by kind then subject (unreadable keys skipped)."""
        now = time.time() if now is None else now
        out = []
        for value, meta in self._call("list", "get_prefix", bans_prefix(self.prefix)):
            named = parse_ban_key(self.prefix, meta.key)
            if named is None:
                continue
            ban = decode_ban(*named, value)
            if ban is not None and ban.until > now:
                out.append(ban)
        return sorted(out, key=lambda b: (b.kind, b.subject))

    def add(self, ban: Ban) -> None:
        ttl = max(1, math.ceil(ban.until - time.time()))
        lease = self._call("add", "lease", ttl)
        self._call("add", "put", ban_key(self.prefix, ban.kind, ban.subject), encode_ban(ban), lease)

    def delete(self, subject: str) -> builtins.list[str]:
        """Lift every ban of ``subject`` (an address or a user); the kinds lifted."""
        return [kind for kind in KINDS
                if self._call("del", "delete", ban_key(self.prefix, kind, subject))]
