"""Keeping the worker's user cache current from etcd (read, then watch).

The location cache has its own watch (``cluster.registrar.cache``); this one
feeds credentials and per-user settings. A failure of the watch leads to a
full read and a new watch, so the cache is never silently stale.
"""

from __future__ import annotations

import logging

import trio

from cluster.auth.users import UserCache, users_prefix
from cluster.coordination import EtcdStore
from cluster.coordination.errors import CoordinationError
from cluster.coordination.feed import follow_prefix

log = logging.getLogger("sipcluster.worker")


class UserFeed:
    def __init__(self, store: EtcdStore, prefix: str) -> None:
        self.store = store
        self.prefix = users_prefix(prefix)
        self.cache = UserCache()
        self.loaded = trio.Event()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        cache = self.cache

        async def load(snapshot) -> None:
            cache.load(snapshot.revision, [(kv.key, kv.value) for kv in snapshot.kvs])
            self.loaded.set()

        async def apply(events) -> None:
            cache.apply(events)

        def failed(error: CoordinationError) -> None:
            log.warning("user watch failed; reading again", extra={"error": str(error)})

        await follow_prefix(self.store, self.prefix, load=load, apply=apply, failed=failed,
                            task_status=task_status)
