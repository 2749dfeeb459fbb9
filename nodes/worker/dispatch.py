"""Destination sets on a worker: the etcd feed of sets and health, and the
prober of the members this worker is assigned — thin adapters around
``cluster.dispatch``.

Every worker follows ``/<prefix>/dispatcher/`` into its ``Dispatcher``, so
every shard orders a set from the same health. Each member is probed by one
worker of the cluster: the owner of ``<set>\\0<uri>`` on the hash ring every
node already agrees on (no election, no extra etcd traffic; a ring change
hands a member over, and the new prober starts from the state etcd holds).
The transaction user sends the OPTIONS when its timers run (a client
transaction like any other, through the linked edge ``probe_via`` names,
whose address our Via carries) and counts their ends in the
``ProbeSchedule``; the prober here keeps the assignment and the edge current
and writes each member's health to etcd when it changes, and once after the
first probe of a member it takes over.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Container, Iterable

import trio

from cluster.config import Config
from cluster.coordination import EtcdStore
from cluster.coordination.errors import CoordinationError
from cluster.coordination.feed import follow_prefix
from cluster.dispatch import (
    Dispatcher, HealthPolicy, HealthRecord, InvalidSet, ProbeSchedule, decode_health, decode_set,
    dispatcher_prefix, encode_health, health_key, parse_health_key, sets_prefix,
)
from cluster.sharding import Delete, Put
from cluster.sharding.membership import Member

from .link import EdgeLinks
from .standing import ShardStanding

log = logging.getLogger("sipcluster.worker")

REASSIGN_EVERY = 1.0
"""Seconds between looks at the ring and the sets for this worker's members."""


Probing = tuple[ShardStanding, EdgeLinks, Callable[[], None]]
"""What probing needs of the worker: its standing (ring, edges), its links
(which edges are linked) and the function that wakes its timer task."""


def probe_via(edges: Iterable[Member], linked: Container[str]) -> tuple[str, str] | None:
    """The first linked edge that advertises a UDP address, and that address:
    where probes leave and what their Via names (``Dispatcher.probe_via``);
    None when no such edge is there yet."""
    for member in edges:
        address = member.sip_address("UDP")
        if address and member.id in linked:
            return member.id, address
    return None


class Destinations:
    """A worker's destination sets: the ``Dispatcher`` its transaction user
    reads, the feed keeping it current and, with ``probing``, the prober of
    the members the ring gives this worker."""

    def __init__(self, config: Config, probing: Probing | None) -> None:
        self.config = config
        self.probing = probing
        self.dispatcher = Dispatcher()
        self.prober: SetProber | None = None

    async def start(self, nursery: trio.Nursery, store: EtcdStore, stats: Counter[str]) -> None:
        d = self.config.dispatcher
        prefix = self.config.cluster.prefix
        await nursery.start(DispatchFeed(store, prefix, self.dispatcher, stats).run)
        if self.probing is None:
            return
        standing, links, kick = self.probing
        self.dispatcher.schedule = ProbeSchedule(HealthPolicy(
            interval=d.probe_interval, timeout=d.probe_timeout, down_after=d.probe_down_after,
            up_after=d.probe_up_after, alive=d.alive_codes()))
        self.prober = SetProber(self.config.cluster.node_id, self.dispatcher, store, prefix, standing=standing,
                                links=links, kick=kick, stats=stats)
        await nursery.start(self.prober.run)


class DispatchFeed:
    """Sets and member health from etcd into ``dispatcher``."""

    def __init__(self, store: EtcdStore, prefix: str, dispatcher: Dispatcher, stats: Counter[str]) -> None:
        self.store = store
        self.prefix = prefix
        self.dispatcher = dispatcher
        self.stats = stats

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async def load(snapshot) -> None:
            self.dispatcher.clear()
            for kv in snapshot.kvs:
                self.put(kv.key, kv.value)

        async def apply(events: tuple[Put | Delete, ...]) -> None:
            for event in events:
                if isinstance(event, Put):
                    self.put(event.key, event.value)
                else:
                    self.delete(event.key)

        def failed(error: CoordinationError) -> None:
            log.warning("destination set watch failed; reading again", extra={"error": str(error)})

        await follow_prefix(self.store, dispatcher_prefix(self.prefix), load=load, apply=apply,
                            failed=failed, task_status=task_status)

    def put(self, key: str | bytes, value: bytes) -> None:
        text = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
        start = sets_prefix(self.prefix)
        if text.startswith(start):
            name = text[len(start):]
            try:
                dset = decode_set(value)
                if dset.name != name:
                    raise InvalidSet(f"record names set {dset.name!r}")
            except InvalidSet as error:
                # A set nobody can use routes nowhere rather than somewhere wrong.
                self.dispatcher.remove_set(name)
                self.stats["dispatch_bad_set"] += 1
                log.warning("destination set unusable", extra={"set": name, "error": str(error)})
                return
            self.dispatcher.put_set(dset)
            return
        member = parse_health_key(self.prefix, text)
        record = decode_health(value) if member is not None else None
        if member is not None and record is not None:
            self.dispatcher.put_health(member, record)

    def delete(self, key: str | bytes) -> None:
        text = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
        start = sets_prefix(self.prefix)
        if text.startswith(start):
            self.dispatcher.remove_set(text[len(start):])
            return
        member = parse_health_key(self.prefix, text)
        if member is not None:
            self.dispatcher.remove_health(member)


class SetProber:
    """Keeps the worker's probing current: every REASSIGN_EVERY seconds the
    members the ring gives this worker (``Dispatcher.schedule``), the edge
    probes go through (``probe_via``), a kick for the timer task that sends
    them, and each health change written to etcd."""

    def __init__(self, node_id: str, dispatcher: Dispatcher, store: EtcdStore, prefix: str, *,
                 standing: ShardStanding, links: EdgeLinks, kick: Callable[[], None],
                 stats: Counter[str]) -> None:
        assert dispatcher.schedule is not None
        self.node_id = node_id
        self.dispatcher = dispatcher
        self.schedule = dispatcher.schedule
        self.store = store
        self.prefix = prefix
        self.standing = standing
        self.links = links
        self.kick = kick
        self.stats = stats
        self._published: set[tuple[str, str]] = set()
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while True:
                try:
                    self.tick(trio.current_time())
                except Exception:  # a bug costs this round, not the worker
                    log.exception("destination set probing failed")
                    self.stats["internal_error"] += 1
                await trio.sleep(REASSIGN_EVERY)

    def tick(self, now: float) -> None:
        self.assign(now)
        view = self.standing.view
        self.dispatcher.probe_via = None if view is None else probe_via(view.edges(), self.links.edges)
        self.publish()
        self.kick()

    def assign(self, now: float) -> None:
        ring = self.standing.ring()
        mine: list[tuple[tuple[str, str], bool]] = []
        if ring is not None and self.node_id in ring:
            dispatcher = self.dispatcher
            for name, dset in dispatcher.sets.items():
                for m in dset.members:
                    if ring.owner(f"{name}\x00{m.uri}".encode()) == self.node_id:
                        record = dispatcher.health.get((name, m.uri))
                        mine.append(((name, m.uri), record is None or record.up))
        self.schedule.assign(mine, now)
        self._published &= set(self.schedule.health)

    def publish(self) -> None:
        """Each health change, and a member's state after its first probe
        since this worker took it over (``dispatcher list`` shows it)."""
        changes, self.dispatcher.changes = self.dispatcher.changes, []
        for change in changes:
            self.stats["dispatch_member_up" if change.up else "dispatch_member_down"] += 1
            log.warning("destination set member %s", "up" if change.up else "down",
                        extra={"set": change.member[0], "member": change.member[1], "status": change.status})
            self._publish(change.member)
        for member, health in self.schedule.health.items():
            if member not in self._published and (health.good or health.bad):
                self._publish(member)

    def _publish(self, member: tuple[str, str]) -> None:
        health = self.schedule.health.get(member)
        if health is None:
            return
        self._published.add(member)
        record = HealthRecord(health.up, health.status, time.time(), self.node_id)
        # This shard routes by it at once; the others when etcd tells them.
        self.dispatcher.put_health(member, record)
        if self._nursery is not None:
            self._nursery.start_soon(self._write, member, record)

    async def _write(self, member: tuple[str, str], record: HealthRecord) -> None:
        try:
            await self.store.put(health_key(self.prefix, *member), encode_health(record))
        except CoordinationError as error:
            # Written again at the next round; meanwhile the other shards
            # route by the state they last saw.
            self._published.discard(member)
            self.stats["dispatch_health_write_failed"] += 1
            log.warning("member health not written to etcd", extra={"error": str(error)})
