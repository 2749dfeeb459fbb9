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

log = logging.getLogger("sipcluster.worker")


class UserFeed:
    def __init__(self, store: EtcdStore, prefix: str) -> None:
        self.store = store
        self.prefix = users_prefix(prefix)
        self.cache = UserCache()
        self.loaded = trio.Event()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        started = False
        while True:
            try:
                snapshot = await self.store.get_prefix(self.prefix)
                self.cache.load(snapshot.revision, [(kv.key, kv.value) for kv in snapshot.kvs])
                self.loaded.set()
                if not started:
                    task_status.started()
                    started = True
                async with self.store.watch_prefix(self.prefix,
                                                   start_revision=snapshot.revision + 1) as stream:
                    async for events in stream:
                        self.cache.apply(events)
            except CoordinationError as error:
                log.warning("user watch failed; reading again", extra={"error": str(error)})
                if not started:
                    task_status.started()
                    started = True
                await trio.sleep(1.0)
