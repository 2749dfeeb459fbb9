"""Start-up wiring of a worker: its etcd-backed state and what the transaction user asks of it.

Each etcd client gets its observer (``EtcdMetrics``) when it is built, and
with tracing on the registrar's store and the location cache are wrapped by
their traced forms (``cluster.observability.etcd``), which implement the same
protocols: nothing is patched afterwards. ``WorkerStores.start`` runs the
watches and feeds in the worker's nursery; ``services`` builds the
``Services`` the transaction user reads (DESIGN §6: all from local memory).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import trio

from cluster.config import Config
from cluster.coordination import EtcdStore
from cluster.defence import USER, AuthFailures, BanTable
from cluster.defence.store import BanFeed, BanPublisher
from cluster.observability.etcd import EtcdMetrics, TracedLocations, TracedLocationStore
from cluster.observability.tracing import Tracing
from cluster.proxy.flows import FlowTokens
from cluster.registrar.cache import LocationCache
from cluster.registrar.etcd_store import EtcdLocationStore
from cluster.registrar.rules import RegistrarPolicy
from cluster.registrar.store import LocationStore

from .defence import PasswordGuard
from .dispatch import Destinations, Probing
from .feeds import UserFeed
from .registrations import Registrations
from .services import Locations, Services

CHALLENGE_SWEEP = 2.0
"""Seconds between looks for digest challenges left unanswered."""
USER_BANS = 65536
"""Most user bans a worker holds (password guessing); the oldest go first."""


class WorkerStores:
    def __init__(self, config: Config, etcd: EtcdMetrics, tracing: Tracing | None,
                 probing: Probing | None = None) -> None:
        """``probing``: what the worker's destination-set prober needs of the node."""
        prefix = config.cluster.prefix
        self.config = config
        self.destinations = Destinations(config, probing)
        self.kv = EtcdStore.from_config(config.cluster, observer=etcd.client("users"))
        self.registrar = EtcdLocationStore(self.kv.access, prefix=prefix, observer=etcd.client("registrar"))
        """The registrar's bindings in etcd (its queues are a metric)."""
        self.cache = LocationCache(self.kv.access, prefix=prefix, observer=etcd.client("location_cache"))
        """The watch-fed copy of every binding that lookups read."""
        self.users = UserFeed(self.kv, prefix)
        self.location_store: LocationStore = self.registrar
        """What REGISTER reads and writes: ``registrar``, traced when tracing is on."""
        self.locations: Locations = self.cache
        if tracing is not None:
            # Spans for a call's etcd work and location lookups.
            self.location_store = TracedLocationStore(self.registrar, tracing)
            self.locations = TracedLocations(self.cache, tracing)

    def registrations(self, stats: Counter[str], tracing: Tracing | None,
                      bug: Callable[[str, str | None], None], flows: FlowTokens) -> Registrations:
        """REGISTER's etcd work over ``location_store``, under ``worker.registrar_*``
        and ``worker.flow_timer``; ``flows`` names the flows contacts register over."""
        w = self.config.worker
        policy = RegistrarPolicy(min_expires=w.registrar_min_expires, max_expires=w.registrar_max_expires,
                                 default_expires=w.registrar_default_expires, flow_timer=w.flow_timer)
        return Registrations(self.location_store, policy, stats=stats, tracing=tracing, bug=bug, flows=flows)

    async def services(self, stats: Counter[str], guard: PasswordGuard | None) -> Services:
        w = self.config.worker
        return Services(domains=w.domains, trusted=w.trusted, nonce_secret=await self._nonce_secret(),
                        nonce_ttl=w.nonce_ttl, locations=self.locations, users=self.users.cache,
                        digest_algorithms=w.digest_algorithms, digest_sha256_domains=w.digest_sha256_domains,
                        outbound_proxy=w.outbound_proxy, events=stats, guard=guard,
                        foreign_set=self.config.dispatcher.foreign_set, dispatcher=self.destinations.dispatcher,
                        flow_secret=await self._flow_secret())

    async def _nonce_secret(self) -> bytes:
        configured = self.config.worker.nonce_secret
        if configured:
            return configured.encode()
        # No configured secret: the cluster's random one, made by the first
        # worker and kept in etcd (cluster.coordination.secrets) — never
        # derived from public values, or anyone could mint nonces.
        from cluster.coordination.secrets import wait_for_secret
        return await wait_for_secret(self.kv, self.config.cluster.prefix, "nonce")

    async def _flow_secret(self) -> bytes:
        """The key of RFC 5626 flow tokens (``cluster.proxy.flows``): a
        cluster secret of its own, so every shard reads every token."""
        from cluster.coordination.secrets import wait_for_secret
        return await wait_for_secret(self.kv, self.config.cluster.prefix, "flow")

    async def start(self, nursery: trio.Nursery, guard: PasswordGuard | None, stats: Counter[str]) -> None:
        """Run the registrar's store, the location, user and destination-set
        watches (and set probing) and, with password guessing guarded, the ban
        publisher and feed."""
        await nursery.start(self.registrar.run)
        nursery.start_soon(self.cache.run)
        await nursery.start(self.users.run)
        await self.destinations.start(nursery, self.kv, stats)
        if guard is None:
            return
        # Publish password-guessing bans; hold the user bans etcd reports.
        if guard.publisher is not None:
            await nursery.start(guard.publisher.run, self.kv)
        await nursery.start(BanFeed(self.kv, self.config.cluster.prefix, kinds=(USER,),
                                    put=lambda ban: guard.put(ban, time.time()),
                                    lifted=guard.lifted, reset=guard.reset, stats=stats).run)


def password_guard(config: Config, node_id: str, stats: Counter[str]) -> PasswordGuard | None:
    """``worker.auth_fail_*`` as a ``PasswordGuard``; None when turned off."""
    w = config.worker
    if w.auth_fail_limit <= 0:
        return None
    failures = AuthFailures(limit=w.auth_fail_limit, window=w.auth_fail_window, ban_time=w.auth_ban_time)
    return PasswordGuard(failures, BanTable(USER_BANS), node_id, stats,
                         BanPublisher(config.cluster.prefix, stats))


async def sweep_challenges(services: Services, bug: Callable[[str], None]) -> None:
    """Now and then, log the digest challenges nobody answered (the client
    gave up: often an algorithm it does not know). ``bug`` logs and counts a
    bug met by one sweep, which costs that sweep, not the worker."""
    while True:
        await trio.sleep(CHALLENGE_SWEEP)
        try:
            services.unanswered_challenges(time.time())
        except Exception:  # noqa: BLE001 - a bug costs this sweep, not the worker
            bug("challenge sweep failed")


def cluster_route(config: Config) -> str | None:
    """The cluster's name for Record-Route (``cluster.record_route``); None:
    each edge's own advertised address."""
    return config.cluster.record_route
