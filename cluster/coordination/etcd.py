"""The async etcd adapter for trio code (membership, user feed, SIP log switch).

Not sans-IO: this is the runtime side of DESIGN §4 and §6. ``EtcdStore`` is a
thin async face over python3-etcd3 for trio code: every blocking call runs on
a worker thread through ``trio.to_thread.run_sync(abandon_on_cancel=True)``
and carries a gRPC deadline, so the event loop never waits on etcd and a
cancelled caller never waits for a stuck thread. Every etcd3/gRPC exception
becomes a ``CoordinationError`` in ``EtcdStore._translated``, through the
shared connection (``cluster.coordination.connection``: TLS, auth, token
renewal, endpoint failover), and nowhere else (tooz's one-decorator rule,
STYLE §4).

One habit of python3-etcd3 0.13 shapes this module: its ``Watcher`` thread calls ``six.itervalues`` without importing six when
  a stream ends, so a dying watch stream drops its callbacks without a word.
  Watches here drive etcd's Watch RPC directly on the client's channel, and
  every way a stream can end (error, cancel, server close, compaction)
  reaches the caller as a ``CoordinationError``.

Values returned are plain frozen dataclasses (``KeyValue``, ``Snapshot``,
``Lease``) and watch events are ``cluster.sharding.Put`` / ``Delete``, so
nothing above this module touches a protobuf message.
"""

from __future__ import annotations

import math
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import etcd3
import grpc
import trio
from etcd3 import etcdrpc
from etcd3.etcdrpc import kv_pb2
from etcd3.utils import prefix_range_end

from cluster.sharding import Delete, Put

from .connection import DEFAULT_TIMEOUT, ENDPOINT_RETRY, EtcdAccess, EtcdConnection
from .errors import CoordinationError, WatchCompacted
from .observer import EtcdObserver

if TYPE_CHECKING:
    from cluster.config import ClusterConfig

__all__ = [
    "DEFAULT_TIMEOUT", "ENDPOINT_RETRY", "EtcdStore", "KeyValue", "Lease", "Snapshot",
    "WatchStream",
]

T = TypeVar("T")

_PUT = kv_pb2.Event.PUT


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key as etcd stores it; ``lease`` is 0 for a key without a lease."""

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A range read: ``kvs`` (ordered by key) as of store ``revision``.

    ``revision`` is the whole store's revision when etcd answered, so a
    watch from ``revision + 1`` continues exactly where the read stopped.
    """

    revision: int
    kvs: tuple[KeyValue, ...]


@dataclass(frozen=True, slots=True)
class Lease:
    """A granted lease: ``ttl`` is what etcd granted (it may raise a TTL below its minimum)."""

    id: int
    ttl: int


def _key_value(kv: Any) -> KeyValue:
    return KeyValue(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)


def _event(event: Any) -> Put | Delete:
    # For a delete, etcd reports the deletion's revision as the kv's mod_revision.
    kv = event.kv
    if event.type == _PUT:
        return Put(kv.key, kv.value, kv.mod_revision)
    return Delete(kv.key, kv.mod_revision)


def _as_bytes(key: str | bytes) -> bytes:
    return key if isinstance(key, bytes) else key.encode("utf-8")


class EtcdStore:
    """Async etcd key/value, lease and watch operations for trio code.

    ``endpoints`` is an ``EtcdAccess`` or client URLs (``"http://127.0.0.1:2379"``,
    ``"https://etcd-0:2379"``; a string may list several, comma-separated)
    with the TLS and auth arguments. The gRPC connection (reading the TLS
    files, and the auth handshake when ``user`` is set) happens on the first
    call, off the event loop. ``timeout`` bounds
    every unary call. All failures raise ``CoordinationError``.

    ``transactions`` builds the compares and operations ``txn`` takes
    (``store.transactions.version(key) == 0``,
    ``store.transactions.put(key, value, lease=lease_id)``), so callers need
    not import etcd3.
    """

    transactions = etcd3.Transactions()

    def __init__(self, endpoints: EtcdAccess | str | Sequence[str], *, ca_cert: str | None = None,
                 cert_key: str | None = None, cert_cert: str | None = None,
                 user: str | None = None, password: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT, observer: EtcdObserver | None = None) -> None:
        if isinstance(endpoints, EtcdAccess):
            access = endpoints
        else:
            # EtcdAccess splits a comma-separated str and keeps a tuple.
            access = EtcdAccess(endpoints, ca=ca_cert,  # type: ignore[arg-type]
                                cert=cert_cert, key=cert_key, user=user,
                                password=password, timeout=timeout)
        self.access = access
        self.timeout = access.timeout
        self._connection = EtcdConnection(access, observer=observer)
        # Watch receives block until etcd has news; they get their own
        # limiter so they never starve trio's default thread pool.
        self._waits = trio.CapacityLimiter(math.inf)

    @classmethod
    def from_config(cls, cluster: ClusterConfig, *, timeout: float = DEFAULT_TIMEOUT,
                    observer: EtcdObserver | None = None) -> EtcdStore:
        """A store for ``config.cluster`` (endpoints, TLS files, auth) that
        reports its operations to ``observer``."""
        return cls(EtcdAccess.from_config(cluster, timeout=timeout), observer=observer)

    def __repr__(self) -> str:
        return f"<EtcdStore {self.access.describe()}>"

    # -- the error boundary ---------------------------------------------------

    def _translated(self, op: str, fn: Callable[..., T], args: tuple) -> T:
        """Run one etcd operation; the only place etcd3/gRPC errors become ours."""
        return self._connection.run(op, fn, *args)

    async def _run(self, op: str, fn: Callable[..., T], *args: Any,
                   limiter: trio.CapacityLimiter | None = None) -> T:
        return await trio.to_thread.run_sync(
            self._translated, op, fn, args, abandon_on_cancel=True, limiter=limiter)

    def _client(self) -> etcd3.MultiEndpointEtcd3Client:
        # Worker threads only: the first call connects and may authenticate.
        return self._connection.client()

    def close(self) -> None:
        """Close the gRPC channels; later calls raise ``CoordinationError``."""
        self._connection.close()

    # -- keys --------------------------------------------------------------------

    async def get(self, key: str | bytes) -> KeyValue | None:
        """The key's current value and metadata, or None if it does not exist."""
        return await self._run("get", self._get, key)

    def _get(self, key: str | bytes) -> KeyValue | None:
        response = self._client().get_response(key)
        return _key_value(response.kvs[0]) if response.kvs else None

    async def get_prefix(self, prefix: str | bytes) -> Snapshot:
        """Every key starting with ``prefix``, and the revision they were read at."""
        return await self._run("get_prefix", self._get_prefix, prefix)

    def _get_prefix(self, prefix: str | bytes) -> Snapshot:
        response = self._client().get_prefix_response(prefix, sort_order="ascend")
        return Snapshot(response.header.revision, tuple(map(_key_value, response.kvs)))

    async def get_prefix_pages(self, prefix: str | bytes, page: int) -> AsyncIterator[Snapshot]:
        """Every key under ``prefix`` as ``get_prefix`` reads them, in pages of
        at most ``page`` keys, all as of the revision of the first page.

        For prefixes that may hold more than one gRPC message takes (4 MiB):
        each page is a separate range read, so no read is unbounded. A page
        read after etcd compacted that revision fails (``CoordinationError``):
        read again."""
        prefix = _as_bytes(prefix)
        start, revision, more = prefix, 0, True
        while more:
            snapshot, more = await self._run("get_prefix", self._get_page, prefix, start, page, revision)
            revision = snapshot.revision
            if snapshot.kvs:
                start = snapshot.kvs[-1].key + b"\0"
            yield snapshot

    def _get_page(self, prefix: bytes, start: bytes, limit: int, revision: int) -> tuple[Snapshot, bool]:
        response = self._client().get_range_response(start, prefix_range_end(prefix), sort_order="ascend",
                                                     limit=limit, revision=revision or None)
        return Snapshot(revision or response.header.revision, tuple(map(_key_value, response.kvs))), response.more

    async def put(self, key: str | bytes, value: bytes, *, lease: int | None = None) -> int:
        """Write ``value`` (attached to ``lease`` if given); returns the new revision."""
        return await self._run("put", self._put, key, value, lease)

    def _put(self, key: str | bytes, value: bytes, lease: int | None) -> int:
        return self._client().put(key, value, lease=lease).header.revision

    async def delete(self, key: str | bytes) -> bool:
        """Delete ``key``; False if it did not exist."""
        return await self._run("delete", self._delete, key)

    def _delete(self, key: str | bytes) -> bool:
        return self._client().delete(key)

    async def txn(self, compare: Iterable[Any], success: Iterable[Any] = (),
                  failure: Iterable[Any] = ()) -> tuple[bool, list]:
        """etcd3's ``transaction``: ``(succeeded, responses)``, built with ``transactions``."""
        return await self._run("txn", self._txn, list(compare), list(success), list(failure))

    def _txn(self, compare: list, success: list, failure: list) -> tuple[bool, list]:
        return self._client().transaction(compare=compare, success=success, failure=failure)

    # -- leases ------------------------------------------------------------------

    async def grant_lease(self, ttl: int) -> Lease:
        """A new lease of ``ttl`` seconds."""
        return await self._run("grant_lease", self._grant_lease, ttl)

    def _grant_lease(self, ttl: int) -> Lease:
        lease = self._client().lease(ttl)
        return Lease(lease.id, lease.ttl)

    async def refresh_lease(self, lease_id: int) -> int:
        """Keep the lease alive once; returns its new TTL, ≤ 0 if etcd no longer has it."""
        return await self._run("refresh_lease", self._refresh_lease, lease_id)

    def _refresh_lease(self, lease_id: int) -> int:
        # One keep-alive request; etcd answers it, then ends the stream
        # because our side has closed.
        responses = list(self._client().refresh_lease(lease_id))
        if not responses:
            raise CoordinationError("refresh_lease: keep-alive stream closed without an answer")
        return responses[-1].TTL

    async def revoke_lease(self, lease_id: int) -> bool:
        """Revoke a lease, deleting its keys in the same revision; False if already gone."""
        return await self._run("revoke_lease", self._revoke_lease, lease_id)

    def _revoke_lease(self, lease_id: int) -> bool:
        try:
            self._client().revoke_lease(lease_id)
        except grpc.RpcError as error:
            if getattr(error, "code", lambda: None)() is grpc.StatusCode.NOT_FOUND:
                return False
            raise
        return True

    # -- watches -----------------------------------------------------------------

    @asynccontextmanager
    async def watch_prefix(self, prefix: str | bytes, *,
                           start_revision: int = 0) -> AsyncIterator[WatchStream]:
        """Watch every key under ``prefix`` from ``start_revision`` (0 = from now).

        Entering waits until etcd has created the watch. Iterating yields
        tuples of ``Put``/``Delete`` events in revision order, and raises
        ``CoordinationError`` when the stream fails or ends (it never ends
        quietly) or ``WatchCompacted`` when ``start_revision`` is no longer in
        etcd's history. Leaving the block cancels the stream.
        """
        client = await self._run("watch", self._client)
        stream = self._translated("watch", self._start_watch, (client, prefix, start_revision))
        try:
            created, _ = await stream._receive()
            if not created:
                raise CoordinationError("watch: etcd answered before creating the watch")
            yield stream
        finally:
            stream.cancel()

    def _start_watch(self, client: etcd3.MultiEndpointEtcd3Client, prefix: str | bytes,
                     start_revision: int) -> WatchStream:
        # Non-blocking: gRPC sends from its own thread.
        key = _as_bytes(prefix)
        create = etcdrpc.WatchRequest(create_request=etcdrpc.WatchCreateRequest(
            key=key, range_end=prefix_range_end(key), start_revision=start_revision))
        stop = threading.Event()

        def requests() -> Iterable[Any]:
            yield create
            # Keep our half of the stream open: etcd ends a watch stream
            # once the client side closes.
            stop.wait()

        call = etcdrpc.WatchStub(client.channel).Watch(
            requests(), credentials=client.call_credentials, metadata=client.metadata)
        return WatchStream(self, call, stop)


class WatchStream:
    """One open etcd Watch RPC; see ``EtcdStore.watch_prefix``."""

    __slots__ = ("_store", "_call", "_stop")

    def __init__(self, store: EtcdStore, call: Any, stop: threading.Event) -> None:
        self._store = store
        self._call = call
        self._stop = stop

    def cancel(self) -> None:
        """End the stream now; a pending or later receive raises ``CoordinationError``.

        Safe from any thread and idempotent.
        """
        self._stop.set()
        self._call.cancel()

    def __aiter__(self) -> WatchStream:
        return self

    async def __anext__(self) -> tuple[Put | Delete, ...]:
        while True:
            _, events = await self._receive()
            if events:
                return events

    async def _receive(self) -> tuple[bool, tuple[Put | Delete, ...]]:
        store = self._store
        return await store._run("watch", _next_response, self._call, limiter=store._waits)


def _next_response(call: Any) -> tuple[bool, tuple[Put | Delete, ...]]:
    # Worker thread: blocks until etcd sends something or the call ends.
    response = next(call, None)
    if response is None:
        raise CoordinationError("watch: stream closed by etcd")
    if response.compact_revision:
        raise WatchCompacted(response.compact_revision)
    if response.canceled:
        raise CoordinationError(
            f"watch: cancelled by etcd ({response.cancel_reason or 'no reason given'})")
    return response.created, tuple(map(_event, response.events))
