"""The membership service: keep this node's member key alive and follow everyone's.

DESIGN §4: each node keeps ``/<prefix>/members/<role>/<node-id>`` under an
etcd lease and every node watches the prefix. What the members *mean* (the
view, the ring, diffs) is pure code in ``cluster.sharding``; this module is
the trio runtime around it, talking to etcd only through ``EtcdStore``.

``EtcdMembership.run()`` is a long-running service of two tasks:

* **The keeper** grants a lease (``ttl`` seconds), puts this node's
  ``Member`` record under its key with that lease, and refreshes the lease
  every ``ttl / 3``. A refresh that answers TTL ≤ 0 (the lease expired while
  etcd was unreachable, or etcd lost it) means grant and put again; so does
  our key vanishing from the view while the lease lives (deleted by hand).
* **The follower** reads the members prefix, then watches it from the next
  revision and folds each batch of events into the immutable
  ``MembershipView``. A watch that fails or ends, whatever the reason, is
  resumed from the last revision seen + 1, so no change is missed; if etcd
  has compacted that history, a full read replaces the view. Every
  ``resync_interval`` seconds the watch is replaced by a full read and a
  fresh watch anyway: the safety net for a stream that stalls silently.

Publishing: ``view`` is always the latest view (replaced, never mutated).
``wait_changed(seen)`` returns as soon as ``view is not seen`` and
``views()`` iterates over the views as they change (latest wins: a slow
consumer skips intermediate views, never the newest). Identity rather than
revision comparison keeps this correct even if etcd's history restarts
(a restored cluster numbers its revisions from 1 again).

While etcd is unreachable the last view stays in place, so the node keeps
routing with the last ring; ``ready`` is False, the tasks retry with
jittered backoff capped at ``retry_cap`` seconds, and the outage is logged
once as a warning, its end once as info (logger ``sipcluster.coordination``).

The ring epoch is ``view.revision``. Nodes that follow the same watch
history reach the same revision after every change; a node that has just
started (or re-read after a compaction) labels the same members with the
revision of its read until the next change. Owners depend on the members
only, so their rings route identically meanwhile.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

import trio

from cluster.sharding import Delete, Member, MembershipView, Put, member_key, members_prefix

from .errors import CoordinationError, WatchCompacted

if TYPE_CHECKING:
    from cluster.config import Config

    from .etcd import EtcdStore, WatchStream
    from .observer import EtcdObserver

__all__ = ["DEFAULT_TTL", "EtcdMembership", "RESYNC_INTERVAL", "RETRY_CAP"]

log = logging.getLogger("sipcluster.coordination")

DEFAULT_TTL = 5
RESYNC_INTERVAL = 30.0
RETRY_CAP = 2.0
_RETRY_FIRST = 0.1


class _Backoff:
    """Doubling retry delays from 0.1 s up to ``cap``, with jitter."""

    __slots__ = ("_cap", "_next")

    def __init__(self, cap: float) -> None:
        self._cap = cap
        self._next = _RETRY_FIRST

    def reset(self) -> None:
        self._next = _RETRY_FIRST

    def delay(self) -> float:
        delay = self._next
        self._next = min(self._cap, delay * 2)
        # After an etcd restart every node of the cluster retries at once;
        # jitter spreads them out.
        return delay * random.uniform(0.5, 1.0)


class EtcdMembership:
    """This node's presence in etcd, and the cluster's membership as it changes.

    ``member`` None makes an observer (e.g. the CLI): it follows the view
    without registering. One ``run()`` per instance.
    """

    def __init__(self, store: EtcdStore, prefix: str, member: Member | None = None, *,
                 ttl: int = DEFAULT_TTL, resync_interval: float = RESYNC_INTERVAL,
                 retry_cap: float = RETRY_CAP, owns_store: bool = False) -> None:
        if ttl < 1:
            raise ValueError(f"lease TTL must be at least 1 s, got {ttl}")
        self.store = store
        self.prefix = prefix
        self.member = member
        self.ttl = ttl
        self.resync_interval = resync_interval
        self.retry_cap = retry_cap
        #: This node's member key, None for an observer.
        self.key = member_key(prefix, member.role, member.id) if member is not None else None
        self._value = member.to_value() if member is not None else b""
        self._prefix = members_prefix(prefix)
        self._owns_store = owns_store
        #: The latest membership view; replaced on every change.
        self.view = MembershipView(0, {})
        self._changed = trio.Event()
        self._ready = False
        self._outage = False
        # Keeper state. The lock makes leave() wait out an in-flight
        # grant/put/refresh instead of racing it.
        self._lease_lock = trio.Lock()
        #: Wall-clock time (Unix seconds) of the last lease keep-alive etcd
        #: confirmed (or of the registration); None before the first.
        self.last_heartbeat: float | None = None
        #: Wall-clock time (Unix seconds) the current lease was asked for: a
        #: message older than it waited through a lease loss (cluster.sharding.fence).
        self.lease_granted = 0.0
        # trio time at which the last confirmed keep-alive (or grant) was
        # sent: etcd received it later, so the lease lives at least until
        # this + ttl.
        self._confirmed = -math.inf
        self._keeper: trio.CancelScope | None = None
        self._lease_id: int | None = None
        self._written = False
        self._put_revision = 0
        self._registered = False
        self._left = False
        # Follower state: every event up to _resume is reflected in the view.
        self._resume = 0
        self._following = False
        self._stream: WatchStream | None = None

    @classmethod
    def from_config(cls, config: Config, member: Member | None, *,
                    observer: EtcdObserver | None = None) -> EtcdMembership:
        """The service for a node's configuration; it owns (and closes) its
        store, which reports its operations to ``observer``."""
        from .etcd import EtcdStore

        cluster = config.cluster
        return cls(EtcdStore.from_config(cluster, observer=observer), cluster.prefix, member,
                   ttl=cluster.lease_ttl, owns_store=True)

    # -- what the node reads -------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Registered under a live lease (observers: always) and following the watch.

        False before the first registration, during an etcd outage or a
        watch outage, and after ``leave()``.
        """
        return self._ready

    def lease_alive(self, now: float, *, margin: float = 0.0) -> bool:
        """Whether our lease surely still lives at trio time ``now`` (and
        ``margin`` seconds more): etcd confirmed a keep-alive sent less than
        ``ttl - margin`` seconds before. Past ``ttl``, etcd may have expired
        it and given our Call-IDs to another shard (DESIGN §4: a worker
        whose lease is gone takes no new transactions). Observers hold no
        lease: always False."""
        return self.member is not None and not self._left and now < self._confirmed + self.ttl - margin

    @property
    def registered(self) -> bool:
        """Our key is written under a lease that etcd last confirmed alive."""
        return self._registered

    @property
    def following(self) -> bool:
        """A watch on the members prefix is open and ``view`` is current."""
        return self._following

    async def wait_changed(self, seen: MembershipView) -> MembershipView:
        """The current view, as soon as it is not ``seen``."""
        if self.view is not seen:
            await trio.lowlevel.checkpoint()
        while self.view is seen:
            await self._changed.wait()
        return self.view

    def views(self) -> AsyncIterator[MembershipView]:
        """Iterate: the current view, then each new one (latest wins).

        A plain iterator object rather than an async generator, so a
        consumer may stop at any point without leaving anything to finalize.
        """
        return _Views(self)

    # -- running -------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Register (unless an observer), read the members, and keep both current.

        Started once this node's key is written and the first view is in
        ``view``; runs until cancelled. Cancelling without ``leave()`` leaves
        the key to expire with its lease (≤ ``ttl`` seconds).
        """
        try:
            async with trio.open_nursery() as nursery:
                # Register first, so the first view already holds this node.
                if self.member is not None and not self._left:
                    await nursery.start(self._keep_registered)
                await nursery.start(self._follow)
                task_status.started()
        finally:
            self._registered = self._following = self._ready = False
            if self._owns_store:
                self.store.close()

    async def update(self, member: Member) -> None:
        """Rewrite our record (e.g. ``draining=True`` at the start of a
        drain) under the same lease; retried until written or ``ttl`` passes."""
        self.member = member
        self._value = member.to_value()
        backoff = _Backoff(self.retry_cap)
        key = self.key  # None for an observer, which holds no lease either
        with trio.move_on_after(self.ttl):
            while key is not None and self._lease_id is not None and not self._left:
                try:
                    self._put_revision = await self.store.put(key, self._value,
                                                              lease=self._lease_id)
                    return
                except CoordinationError as error:
                    log.debug("update: %s", error.reason)
                    await trio.sleep(backoff.delay())

    async def leave(self) -> bool:
        """Leave the cluster now (SIGTERM drain): stop refreshing, revoke the lease.

        Revoking deletes our key in the same etcd revision, so every node
        drops this member at once; and unlike deleting the key by name, it
        cannot remove the key of a successor registered under the same id.
        The view keeps following. Never raises: if etcd cannot be reached
        within ``ttl`` seconds, the lease expires on its own in that time.
        Returns True if the lease was revoked here.
        """
        if self.member is None or self._left:
            return False
        self._left = True
        self._update_ready()
        async with self._lease_lock:
            if self._keeper is not None:
                self._keeper.cancel()
            lease_id, self._lease_id = self._lease_id, None
            self._registered = self._written = False
        if lease_id is None:
            return False
        backoff = _Backoff(self.retry_cap)
        with trio.move_on_after(self.ttl):
            while True:
                try:
                    await self.store.revoke_lease(lease_id)
                except CoordinationError as error:
                    log.debug("leave: %s", error.reason)
                    await trio.sleep(backoff.delay())
                    continue
                log.info("left the cluster: %s removed", self.key)
                return True
        log.warning("leave: etcd unreachable; %s disappears when its lease expires", self.key)
        return False

    def interrupt_watch(self) -> bool:
        """Break the current watch stream as a network failure would.

        The follower recovers as from any failure (resume from the last
        revision seen + 1). For tests and diagnostics; False if no watch is open.
        """
        stream = self._stream
        if stream is None:
            return False
        stream.cancel()
        return True

    # -- readiness and its logging -------------------------------------------------

    def _update_ready(self) -> None:
        # Healthy: etcd does what we need (after leave(), only the watch).
        healthy = self._following and (self._registered or self.member is None or self._left)
        ready = healthy and not self._left
        if ready and not self._ready:
            log.info("membership ready: %s, view at revision %d with %d members",
                     self.key or "observer", self.view.revision, len(self.view.members))
        elif healthy and self._outage:
            log.info("etcd reachable again; view at revision %d", self.view.revision)
        if healthy:
            self._outage = False
        self._ready = ready

    def _failed(self, what: str, error: CoordinationError) -> None:
        self._update_ready()
        if self._outage:
            log.debug("%s still failing: %s", what, error.reason)
            return
        self._outage = True
        log.warning("etcd %s failed: %s; keeping the membership view at revision %d "
                    "and retrying", what, error.reason, self.view.revision)

    # -- the keeper ----------------------------------------------------------------

    async def _keep_registered(self, *, task_status: trio.TaskStatus[None]
                               = trio.TASK_STATUS_IGNORED) -> None:
        # etcd hands every lease a full TTL again when it comes back up, so a
        # lease survives a restart if the keeper retries well within a TTL.
        backoff = _Backoff(min(self.retry_cap, self.ttl / 4))
        with trio.CancelScope() as self._keeper:
            while True:
                try:
                    async with self._lease_lock:
                        if self._left:
                            return
                        sent = trio.current_time()
                        await self._register()
                except CoordinationError as error:
                    self._registered = False
                    self._failed("registration", error)
                    await trio.sleep(backoff.delay())
                    continue
                backoff.reset()
                self._confirmed = sent
                self.last_heartbeat = time.time()
                self._registered = True
                self._update_ready()
                task_status.started()
                task_status = trio.TASK_STATUS_IGNORED
                await trio.sleep(self.ttl / 3)

    async def _register(self) -> None:
        store = self.store
        if self._lease_id is not None and await store.refresh_lease(self._lease_id) <= 0:
            log.warning("lease of %s expired; registering again", self.key)
            self._lease_id = None
            self._registered = False
            self._update_ready()
        if self._lease_id is None:
            self._written = False
            granted = time.time()
            self._lease_id = (await store.grant_lease(self.ttl)).id
            self.lease_granted = granted
        elif self._written and self._key_vanished():
            log.warning("%s was deleted while its lease lives; writing it again", self.key)
            self._written = False
        if not self._written and self.key is not None:  # (only members register)
            self._put_revision = await store.put(self.key, self._value, lease=self._lease_id)
            self._written = True

    def _key_vanished(self) -> bool:
        # A view at or after our put that lacks our key saw it deleted.
        view = self.view
        return (self._following and view.revision >= self._put_revision
                and self.key not in view.members)

    # -- the follower --------------------------------------------------------------

    async def _follow(self, *, task_status: trio.TaskStatus[None]
                      = trio.TASK_STATUS_IGNORED) -> None:
        backoff = _Backoff(self.retry_cap)
        read_all, periodic = True, False
        while True:
            try:
                if read_all:
                    await self._read_all(periodic=periodic)
                    read_all = periodic = False
                async with self.store.watch_prefix(
                        self._prefix, start_revision=self._resume + 1) as stream:
                    self._stream = stream
                    self._following = True
                    self._update_ready()
                    task_status.started()
                    task_status = trio.TASK_STATUS_IGNORED
                    backoff.reset()
                    with trio.move_on_after(self.resync_interval):
                        async for events in stream:
                            self._apply(events)
                read_all = periodic = True
            except WatchCompacted as error:
                # Not an outage: etcd is there, our resume point is not.
                log.warning("membership %s; reading all members again", error.reason)
                self._following = False
                self._update_ready()
                read_all = True
            except CoordinationError as error:
                self._following = False
                self._failed("watch", error)
                await trio.sleep(backoff.delay())
            finally:
                self._stream = None

    async def _read_all(self, *, periodic: bool) -> None:
        snapshot = await self.store.get_prefix(self._prefix)
        fresh = MembershipView.from_kvs(snapshot.revision,
                                        ((kv.key, kv.value) for kv in snapshot.kvs))
        current = self.view
        if snapshot.revision < self._resume:
            log.warning("etcd revision went back from %d to %d (etcd restored or replaced?); "
                        "taking its members as they are", self._resume, snapshot.revision)
            self._publish(fresh)
        elif fresh.members != current.members or fresh.rejected != current.rejected:
            if periodic:
                log.warning("membership read at revision %d found changes the watch had not "
                            "delivered (view was at %d)", snapshot.revision, current.revision)
            self._publish(fresh)
        # Otherwise keep the current view and its epoch: a read is not a change.
        self._resume = snapshot.revision

    def _apply(self, events: Sequence[Put | Delete]) -> None:
        view = self.view.apply(events)
        last = max(event.revision for event in events)
        if last > self._resume:
            self._resume = last
        if view is not self.view:
            self._publish(view)

    def _publish(self, view: MembershipView) -> None:
        self.view = view
        changed, self._changed = self._changed, trio.Event()
        changed.set()


class _Views:
    """The iterator behind ``EtcdMembership.views()``."""

    __slots__ = ("_membership", "_last")

    def __init__(self, membership: EtcdMembership) -> None:
        self._membership = membership
        self._last: MembershipView | None = None

    def __aiter__(self) -> _Views:
        return self

    async def __anext__(self) -> MembershipView:
        membership = self._membership
        if self._last is None:
            await trio.lowlevel.checkpoint()
            self._last = membership.view
        else:
            self._last = await membership.wait_changed(self._last)
        return self._last
