"""The location service in etcd (DESIGN §6): group commit, bucket leases.

Layout: one key per binding, ``/<prefix>/location/<aor>/<binding_id>``,
holding the msgpack of ``Binding.to_record()``. The AOR is escaped only
where it would break the layout ('%' and '/').

Optimistic concurrency per AOR: ``read`` returns the revision R of the read
and the keys it saw; ``apply`` commits only if no key under the AOR changed
after R (a MOD < R+1 compare over the AOR's range catches puts) and every
key seen still exists (VERSION > 0 catches deletes, including a lease
ending). Otherwise it reports a conflict and ``register`` re-runs §10.3.

Group commit: ``apply`` only queues its writes. A batcher task takes what is
queued (up to ``max_batch`` AORs, waiting at most ``max_delay`` for more)
and commits it as ONE etcd transaction in which every AOR is a nested
transaction with its own compares. An AOR that lost its compare is the only
one that fails; the others commit in the same round trip, so no fallback
pass is needed. Two applies for the same AOR never share a batch (their
compares would both pass against the same old state); the second waits for
the next batch, where its compare sees the first one's write. Reads are
batched the same way (one transaction of range reads, one revision).

Expiry: a binding expiring at t is attached to the lease of its bucket,
``ceil(t / bucket) * bucket``, granted once with a TTL reaching that
bucket's end plus ``lease_margin`` and cached until then. With 30 s buckets
and max_expires 7200 at most 241 leases are alive, however many bindings
there are; a binding outlives its expiry in etcd by less than one bucket
plus the margin, which readers hide by checking ``expires_at``.
"""

from __future__ import annotations

import math
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import trio

from cluster.coordination.connection import EtcdAccess
from cluster.coordination.observer import EtcdObserver

from .binding import Binding
from .etcd_kv import EtcdKV, LeaseNotFound, delete, exists, prefix_end, put, unchanged_since
from .store import AorState, StoreUnavailable

__all__ = ["EtcdLocationStore", "StoreCounters", "aor_prefix", "location_prefix", "split_key"]

# etcd's --max-txn-ops default.
MAX_TXN_OPS = 128
# Past this many bindings in one AOR only the range compare guards a write:
# a concurrent delete then goes unnoticed (the write still lands, on a view
# that may list a binding just removed), but the AOR stays writable.
MAX_EXISTENCE_COMPARES = 64
_UNESCAPE_RE = re.compile("%(25|2F)")
_UNESCAPE = {"25": "%", "2F": "/"}


def location_prefix(prefix: str) -> bytes:
    """``/<prefix>/location/`` as bytes."""
    root = prefix.strip("/")
    return (f"/{root}/location/" if root else "/location/").encode()


def aor_prefix(root: bytes, aor: str) -> bytes:
    escaped = aor.replace("%", "%25").replace("/", "%2F") if ("%" in aor or "/" in aor) else aor
    return root + escaped.encode("utf-8", "surrogateescape") + b"/"


def split_key(root: bytes, key: bytes) -> tuple[str, str]:
    """(aor, binding_id) of a binding key under ``root``."""
    rest = key[len(root):].decode("utf-8", "surrogateescape")
    escaped, _, bid = rest.rpartition("/")
    aor = _UNESCAPE_RE.sub(lambda m: _UNESCAPE[m.group(1)], escaped) if "%" in escaped else escaped
    return aor, bid


def decode_binding(value: bytes) -> Binding:
    """A stored value back to a Binding; ValueError if unreadable."""
    try:
        record = msgpack.unpackb(value)
    except (ValueError, msgpack.UnpackException) as exc:
        raise ValueError(f"undecodable binding value: {exc!r}") from None
    if not isinstance(record, dict):
        raise ValueError("binding value is not a map")
    return Binding.from_record(record)


def encode_binding(binding: Binding) -> bytes:
    return msgpack.packb(binding.to_record())


@dataclass(frozen=True, slots=True)
class _Version:
    revision: int
    keys: tuple[bytes, ...]


@dataclass(slots=True)
class StoreCounters:
    commits: int = 0
    """Write transactions sent to etcd (one per batch)."""
    ops: int = 0
    """Puts and deletes inside them."""
    applies: int = 0
    conflicts: int = 0
    """Applies refused because the AOR changed since it was read."""
    read_txns: int = 0
    reads: int = 0
    leases_granted: int = 0
    bad_records: int = 0


class _Pending:
    __slots__ = ("start", "end", "puts", "deletes", "expect", "size", "done", "result", "error")

    def __init__(self, start: bytes, end: bytes) -> None:
        self.start = start
        self.end = end
        self.puts: list[tuple[bytes, bytes, float]] = []
        self.deletes: list[bytes] = []
        self.expect: _Version | None = None
        self.size = 0
        """Operations of its nested transaction (the larger of compares and writes)."""
        self.done = trio.Event()
        self.result: Any = None
        self.error: StoreUnavailable | None = None


class EtcdLocationStore:
    """``LocationStore`` on etcd. ``run()`` must be running for reads and writes."""

    def __init__(
        self,
        etcd: EtcdKV | EtcdAccess | Callable[[], object] | Sequence[str],
        *,
        prefix: str = "sipcluster",
        bucket: float = 30.0,
        lease_margin: float = 5.0,
        max_batch: int = 128,
        max_delay: float = 0.002,
        queue_size: int = 8192,
        clock: Callable[[], float] = time.time,
        observer: EtcdObserver | None = None,
    ) -> None:
        self._kv = EtcdKV.of(etcd, observer)
        self.root = location_prefix(prefix)
        self.bucket = bucket
        self.lease_margin = lease_margin
        self.max_batch = max(1, min(max_batch, MAX_TXN_OPS - 1))
        self.max_delay = max_delay
        self._clock = clock
        self.counters = StoreCounters()
        self._leases: dict[float, int] = {}
        self._write_in, self._write_out = trio.open_memory_channel[_Pending](queue_size)
        self._read_in, self._read_out = trio.open_memory_channel[_Pending](queue_size)
        self._running = False

    # -- service ----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the read and write batchers until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._batcher, self._read_out, self._read_batch, 0.0)
                nursery.start_soon(self._batcher, self._write_out, self._write_batch, self.max_delay)
                self._running = True
                task_status.started()
        finally:
            self._running = False
            stopped = StoreUnavailable("location store stopped")
            for channel in (self._read_out, self._write_out):
                while True:
                    try:
                        _finish(channel.receive_nowait(), error=stopped)
                    except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                        break

    def close(self) -> None:
        self._kv.close()

    def lease_ids(self) -> dict[float, int]:
        """Bucket end → lease id, for the leases currently cached."""
        return dict(self._leases)

    def queued(self) -> tuple[int, int]:
        """(reads, writes) waiting for the batcher to take them."""
        return (self._read_in.statistics().current_buffer_used,
                self._write_in.statistics().current_buffer_used)

    # -- LocationStore ---------------------------------------------------------------

    async def bindings(self, aor: str, *, now: float) -> list[Binding]:
        return (await self.read(aor)).live(now)

    async def read(self, aor: str) -> AorState:
        start = aor_prefix(self.root, aor)
        pending = _Pending(start, prefix_end(start))
        return await self._submit(self._read_in, pending)

    async def apply(
        self, aor: str, puts: Iterable[Binding], deletes: Iterable[str], *, expect: Any,
    ) -> int | None:
        start = aor_prefix(self.root, aor)
        pending = _Pending(start, prefix_end(start))
        pending.puts = [(start + b.binding_id.encode(), encode_binding(b), b.expires_at) for b in puts]
        written = {key for key, _, _ in pending.puts}
        # A put and a delete of one key in one transaction is refused by etcd.
        pending.deletes = [k for k in (start + bid.encode() for bid in deletes) if k not in written]
        if expect is not None and not isinstance(expect, _Version):
            raise TypeError(f"expect must come from this store's read(), got {expect!r}")
        pending.expect = expect
        pending.size = max(len(pending.puts) + len(pending.deletes), 0 if expect is None else
                           1 + (len(expect.keys) if len(expect.keys) <= MAX_EXISTENCE_COMPARES else 0))
        self.counters.applies += 1
        return await self._submit(self._write_in, pending)

    async def all_aors(self) -> list[str]:
        _, kvs = await trio.to_thread.run_sync(
            lambda: self._kv.read_prefix(self.root, keys_only=True), abandon_on_cancel=True)
        return sorted({split_key(self.root, key)[0] for key, _, _ in kvs})

    async def _submit(self, channel: trio.MemorySendChannel, pending: _Pending) -> Any:
        if not self._running:
            raise RuntimeError("EtcdLocationStore.run() is not running")
        await channel.send(pending)
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.result

    # -- batching ---------------------------------------------------------------------

    async def _batcher(self, source: trio.MemoryReceiveChannel, commit: Callable, max_delay: float) -> None:
        carry: deque[_Pending] = deque()
        batch: dict[bytes, _Pending] = {}
        try:
            while True:
                batch = {}
                widest = 0
                waiting, carry = carry, deque()
                for item in waiting:
                    if item.start in batch or (batch and not self._fits(len(batch), widest, item)):
                        carry.append(item)
                    else:
                        batch[item.start] = item
                        widest = max(widest, item.size)
                if not batch:
                    item = await source.receive()
                    batch[item.start] = item
                    widest = item.size
                deadline = trio.current_time() + max_delay
                while True:
                    try:
                        item = source.receive_nowait()
                    except trio.WouldBlock:
                        if max_delay <= 0 or trio.current_time() >= deadline:
                            break
                        late = None
                        with trio.move_on_at(deadline):
                            late = await source.receive()
                        if late is None:
                            break
                        item = late
                    if item.start in batch:
                        # Same AOR twice: the second must see the first's write.
                        carry.append(item)
                    elif self._fits(len(batch), widest, item):
                        batch[item.start] = item
                        widest = max(widest, item.size)
                    else:
                        carry.append(item)
                        break
                await commit(list(batch.values()))
                batch = {}
        finally:
            # Stopping: nobody may be left waiting for an answer.
            stopped = StoreUnavailable("location store stopped")
            for item in (*batch.values(), *carry):
                if not item.done.is_set():
                    _finish(item, error=stopped)

    def _fits(self, count: int, widest: int, item: _Pending) -> bool:
        # etcd 3.5 refuses a transaction once its top-level operations plus
        # the widest nested one exceed --max-txn-ops (128 by default).
        return count < self.max_batch and count + 1 + max(widest, item.size) <= MAX_TXN_OPS

    async def _read_batch(self, batch: list[_Pending]) -> None:
        await self._run_batch(self._read_sync, batch)

    async def _write_batch(self, batch: list[_Pending]) -> None:
        await self._run_batch(self._write_sync, batch)

    async def _run_batch(self, sync: Callable[[list[_Pending]], list[Any]],
                         batch: list[_Pending]) -> None:
        """One etcd transaction for the whole batch, in a thread; every
        caller gets its own result, or the same StoreUnavailable."""
        try:
            results = await trio.to_thread.run_sync(sync, batch, abandon_on_cancel=True)
        except StoreUnavailable as exc:
            for pending in batch:
                _finish(pending, error=exc)
            return
        for pending, result in zip(batch, results):
            _finish(pending, result=result)

    # -- in the worker thread ---------------------------------------------------------

    def _read_sync(self, batch: list[_Pending]) -> list[AorState]:
        revision, results = self._kv.read_ranges([(p.start, p.end) for p in batch])
        counters = self.counters
        counters.read_txns += 1
        counters.reads += len(batch)
        states = []
        for kvs in results:
            bindings = []
            for _, value, _ in kvs:
                try:
                    bindings.append(decode_binding(value))
                except ValueError:
                    # Unreadable (newer format, corruption): invisible to
                    # §10.3, but its key still counts for the compare.
                    counters.bad_records += 1
            states.append(AorState(tuple(bindings), _Version(revision, tuple(k for k, _, _ in kvs))))
        return states

    def _write_sync(self, batch: list[_Pending]) -> list[int | None]:
        try:
            revision, succeeded = self._kv.commit_groups(self._groups(batch))
        except LeaseNotFound:
            # A cached lease vanished (revoked, or etcd restored from a
            # backup): forget them all and grant afresh, once.
            self._leases.clear()
            revision, succeeded = self._kv.commit_groups(self._groups(batch))
        counters = self.counters
        counters.commits += 1
        counters.ops += sum(len(p.puts) + len(p.deletes) for p in batch)
        counters.conflicts += succeeded.count(False)
        return [revision if ok else None for ok in succeeded]

    def _groups(self, batch: list[_Pending]) -> list[tuple[list, list]]:
        now = self._clock()
        self._forget_leases(now)
        groups = []
        for p in batch:
            compares = []
            expect = p.expect
            if expect is not None:
                compares.append(unchanged_since(p.start, p.end, expect.revision))
                if len(expect.keys) <= MAX_EXISTENCE_COMPARES:
                    compares.extend(exists(key) for key in expect.keys)
            ops = [delete(key) for key in p.deletes]
            ops.extend(put(key, value, self._lease(expires_at, now)) for key, value, expires_at in p.puts)
            groups.append((compares, ops))
        return groups

    def _lease(self, expires_at: float, now: float) -> int:
        bucket = self.bucket
        end = math.ceil(expires_at / bucket) * bucket
        lease = self._leases.get(end)
        if lease is None:
            ttl = max(1, math.ceil(end + self.lease_margin - now))
            lease = self._leases[end] = self._kv.grant(ttl)
            self.counters.leases_granted += 1
        return lease

    def _forget_leases(self, now: float) -> None:
        leases = self._leases
        if leases:
            margin = self.lease_margin
            for end in [e for e in leases if e + margin <= now]:
                del leases[end]


def _finish(pending: _Pending, *, result: Any = None, error: StoreUnavailable | None = None) -> None:
    pending.result = result
    pending.error = error
    pending.done.set()
