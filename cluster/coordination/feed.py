"""Following a key prefix in etcd: a range read, then a watch from the next
revision; any failure (a broken stream, a compacted revision, etcd away)
leads to a new read, so a missed change never stands (DESIGN §6 read-cache
pattern). The user cache, the SIP log switch and the ban tables follow
their prefixes this way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from cluster.sharding import Delete, Put

from .errors import CoordinationError
from .etcd import EtcdStore, Snapshot

__all__ = ["follow_prefix"]


async def follow_prefix(store: EtcdStore, prefix: str | bytes, *,
                        load: Callable[[Snapshot], Awaitable[None]],
                        apply: Callable[[tuple[Put | Delete, ...]], Awaitable[None]],
                        failed: Callable[[CoordinationError], None], retry: float = 1.0,
                        page: int | None = None, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """``load`` each full read, ``apply`` each batch of watch events after it;
    ``failed`` hears each failure before the next read, ``retry`` seconds
    later. Started after the first read, or its first failure (the caller
    runs without, and the feed keeps trying).

    With ``page``, a full read is several range reads of at most ``page``
    keys (``EtcdStore.get_prefix_pages``) and ``load`` is called once per
    page, in key order; for a prefix that can grow past one gRPC message
    (4 MiB), which a single read could never take."""
    started = False
    while True:
        try:
            if page is None:
                snapshot = await store.get_prefix(prefix)
                await load(snapshot)
            else:
                async for snapshot in store.get_prefix_pages(prefix, page):
                    await load(snapshot)
            if not started:
                task_status.started()
                started = True
            async with store.watch_prefix(prefix, start_revision=snapshot.revision + 1) as stream:
                async for events in stream:
                    await apply(events)
        except CoordinationError as error:
            failed(error)
            if not started:
                task_status.started()
                started = True
            await trio.sleep(retry)
