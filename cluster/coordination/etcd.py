"""The etcd adapter: the one module that imports etcd3 (and its gRPC).

Not sans-IO: this is the runtime side of DESIGN §4 and §6. ``EtcdStore`` is a
thin async face over python3-etcd3 for trio code: every blocking call runs on
a worker thread through ``trio.to_thread.run_sync(abandon_on_cancel=True)``
and carries a gRPC deadline, so the event loop never waits on etcd and a
cancelled caller never waits for a stuck thread. Every etcd3/gRPC exception
becomes a ``CoordinationError`` in ``EtcdStore._translated`` and nowhere
else (tooz's one-decorator rule, STYLE §4).

Three habits of python3-etcd3 0.13 shape this module:

* After one UNAVAILABLE answer its ``Endpoint`` counts as failed and every
  call is refused for ``time_retry`` seconds, 300 by default: one etcd
  restart would leave a node without etcd for five minutes. Endpoints here
  are retried after ``ENDPOINT_RETRY`` seconds, with failover across all
  configured URLs.
* Its ``Watcher`` thread calls ``six.itervalues`` without importing six when
  a stream ends, so a dying watch stream drops its callbacks without a word.
  Watches here drive etcd's Watch RPC directly on the client's channel, and
  every way a stream can end (error, cancel, server close, compaction)
  reaches the caller as a ``CoordinationError``.
* gRPC's reconnect backoff grows to 120 s by default; it is capped at 1 s so
  a node notices a restarted etcd quickly.

Values returned are plain frozen dataclasses (``KeyValue``, ``Snapshot``,
``Lease``) and watch events are ``cluster.sharding.Put`` / ``Delete``, so
nothing above this module touches a protobuf message.
"""

from __future__ import annotations

import math
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Iterable, Sequence, TypeVar
from urllib.parse import urlsplit

import etcd3
import etcd3.exceptions
import grpc
import trio
from etcd3 import etcdrpc
from etcd3.etcdrpc import kv_pb2
from etcd3.utils import prefix_range_end

from cluster.sharding import Delete, Put

from .errors import CoordinationError, WatchCompacted

if TYPE_CHECKING:
    from cluster.config import ClusterConfig

__all__ = [
    "DEFAULT_TIMEOUT", "ENDPOINT_RETRY", "EtcdStore", "KeyValue", "Lease", "Snapshot",
    "WatchStream",
]

T = TypeVar("T")

#: Deadline of every unary etcd call, in seconds. A call that outlasts it
#: fails and is retried by its caller; a lease refresh stuck longer than the
#: TTL loses the lease, and the membership keeper then registers again.
DEFAULT_TIMEOUT = 3.0
#: Seconds an endpoint that answered UNAVAILABLE is skipped (etcd3: 300).
ENDPOINT_RETRY = 1.0
DEFAULT_PORT = 2379

_GRPC_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # A watch on a half-open connection (peer vanished without a reset)
    # would otherwise wait forever. etcd answers pings more frequent than
    # every 5 s, or pings without an active call, with GOAWAY
    # (--grpc-keepalive-min-time), hence 10 s and only during calls.
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 0),
)

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


def _rpc_text(error: BaseException) -> str:
    code = getattr(error, "code", None)
    details = getattr(error, "details", None)
    if callable(code) and callable(details):
        status = code()
        name = status.name.lower() if status is not None else "unknown"
        return f"{name}: {details()}" if details() else name
    return str(error) or type(error).__name__


def _parse_endpoint(url: str) -> tuple[str, int, bool]:
    """``(host, port, secure)`` of an etcd client URL; bare ``host[:port]`` means http."""
    text = url.strip()
    if "://" not in text:
        text = f"http://{text}"
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an etcd client URL: {url!r}")
    port = parts.port or DEFAULT_PORT  # .port raises ValueError when out of range
    host = parts.hostname
    # gRPC targets are "host:port"; an IPv6 literal needs its brackets back.
    return (f"[{host}]" if ":" in host else host), port, parts.scheme == "https"


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as file:
        return file.read()


class EtcdStore:
    """Async etcd key/value, lease and watch operations for trio code.

    ``endpoints`` are client URLs (``"http://127.0.0.1:2379"``,
    ``"https://etcd-0:2379"``; a string may list several, comma-separated).
    TLS files are read here, at construction, so a wrong path fails at
    start-up; the gRPC connection (and the auth handshake when ``user`` is
    set) happens on the first call, off the event loop. ``timeout`` bounds
    every unary call. All failures raise ``CoordinationError``.

    ``transactions`` builds the compares and operations ``txn`` takes
    (``store.transactions.version(key) == 0``,
    ``store.transactions.put(key, value, lease=lease_id)``), so callers need
    not import etcd3.
    """

    transactions = etcd3.Transactions()

    def __init__(self, endpoints: str | Sequence[str], *, ca_cert: str | None = None,
                 cert_key: str | None = None, cert_cert: str | None = None,
                 user: str | None = None, password: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        if isinstance(endpoints, str):
            endpoints = [part for part in endpoints.split(",") if part.strip()]
        self._targets = tuple(_parse_endpoint(url) for url in endpoints)
        if not self._targets:
            raise ValueError("EtcdStore needs at least one endpoint URL")
        if (user is None) != (password is None):
            raise ValueError("etcd user and password go together")
        if (cert_key is None) != (cert_cert is None):
            raise ValueError("etcd client certificate and key go together")
        self._credentials = None
        if any(secure for _, _, secure in self._targets):
            # root_certificates=None means the system's trust store.
            self._credentials = grpc.ssl_channel_credentials(
                _read(ca_cert), _read(cert_key), _read(cert_cert))
        self._user = user
        self._password = password
        self.timeout = timeout
        self._etcd: etcd3.MultiEndpointEtcd3Client | None = None
        self._lock = threading.Lock()  # guards _etcd across worker threads
        self._closed = False
        # Watch receives block until etcd has news; they get their own
        # limiter so they never starve trio's default thread pool.
        self._waits = trio.CapacityLimiter(math.inf)

    @classmethod
    def from_config(cls, cluster: ClusterConfig, *, timeout: float = DEFAULT_TIMEOUT) -> EtcdStore:
        """A store for ``config.cluster`` (endpoints, TLS files, auth)."""
        return cls(cluster.etcd, ca_cert=cluster.etcd_ca, cert_key=cluster.etcd_key,
                   cert_cert=cluster.etcd_cert, user=cluster.etcd_user,
                   password=cluster.etcd_password, timeout=timeout)

    def __repr__(self) -> str:
        urls = ",".join(f"{'https' if s else 'http'}://{h}:{p}" for h, p, s in self._targets)
        return f"<EtcdStore {urls}>"

    # -- the error boundary ---------------------------------------------------

    def _translated(self, op: str, fn: Callable[..., T], args: tuple) -> T:
        """Run one etcd operation; the only place etcd3/gRPC errors become ours."""
        try:
            return fn(*args)
        except CoordinationError:
            raise
        except grpc.RpcError as error:
            self._drop_rejected_token(error)
            raise CoordinationError(f"{op}: {_rpc_text(error)}") from error
        except etcd3.exceptions.Etcd3Exception as error:
            # etcd3 replaces the gRPC error with a bare class; the status
            # details are on the error it was raised from.
            cause = error.__context__
            text = (_rpc_text(cause) if isinstance(cause, grpc.RpcError)
                    else str(error) or type(error).__name__)
            raise CoordinationError(f"{op}: {text}") from error

    async def _run(self, op: str, fn: Callable[..., T], *args: Any,
                   limiter: trio.CapacityLimiter | None = None) -> T:
        return await trio.to_thread.run_sync(
            self._translated, op, fn, args, abandon_on_cancel=True, limiter=limiter)

    def _drop_rejected_token(self, error: grpc.RpcError) -> None:
        # An expired auth token fails every call until the client
        # authenticates again, which etcd3 does only when constructed.
        if self._user is None or getattr(error, "code", lambda: None)() \
                is not grpc.StatusCode.UNAUTHENTICATED:
            return
        with self._lock:
            stale, self._etcd = self._etcd, None
        if stale is not None:
            stale.close()

    def _client(self) -> etcd3.MultiEndpointEtcd3Client:
        # Worker threads only: the first call connects and may authenticate.
        client = self._etcd
        if client is not None:
            return client
        with self._lock:
            if self._closed:
                raise CoordinationError("etcd store is closed")
            if self._etcd is None:
                endpoints = [
                    etcd3.Endpoint(host, port, secure=secure,
                                   creds=self._credentials if secure else None,
                                   time_retry=ENDPOINT_RETRY, opts=_GRPC_OPTIONS)
                    for host, port, secure in self._targets
                ]
                try:
                    self._etcd = etcd3.MultiEndpointEtcd3Client(
                        endpoints=endpoints, timeout=self.timeout, user=self._user,
                        password=self._password, failover=True)
                except BaseException:
                    for endpoint in endpoints:
                        endpoint.close()
                    raise
            return self._etcd

    def close(self) -> None:
        """Close the gRPC channels; later calls raise ``CoordinationError``."""
        with self._lock:
            self._closed = True
            client, self._etcd = self._etcd, None
        if client is not None:
            client.close()

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
