"""The registrar's only contact with etcd3 and gRPC.

Everything here is blocking (python3-etcd3 is synchronous gRPC) and is meant
to run in a worker thread (``trio.to_thread.run_sync``). It speaks etcd's
protobufs directly rather than through etcd3's helper objects for two
reasons: a group commit needs *nested* transactions and the response
header's revision, which ``Etcd3Client.transaction`` does not return, and a
batch of a few hundred operations is built noticeably faster this way.

The connection itself (TLS, auth and token renewal, endpoint failover and
retry, gRPC backoff) is the project's one etcd connection,
``cluster.coordination.connection.EtcdConnection``. Every gRPC or etcd3
failure leaves this module as ``StoreUnavailable`` (the project's one "etcd
unavailable" error; ``LeaseNotFound`` for a put whose lease is gone), in one
place: ``_call``.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeAlias

import etcd3
import grpc
from etcd3 import etcdrpc

from cluster.coordination.connection import EtcdAccess, EtcdConnection
from cluster.coordination.observer import EtcdObserver

from .store import StoreUnavailable

__all__ = [
    "Compare", "EtcdKV", "LeaseNotFound", "Op", "WatchStream", "connect", "prefix_end",
]

# etcd's protobuf messages (python3-etcd3 ships no type information).
Compare: TypeAlias = etcdrpc.Compare
Op: TypeAlias = etcdrpc.RequestOp
KeyValues = list[tuple[bytes, bytes, int]]  # (key, value, mod_revision)

# Unary calls never wait forever, whatever the client was built with: a
# hung etcd must surface as StoreUnavailable (503), not stall the batcher.
_DEFAULT_TIMEOUT = 5.0


class LeaseNotFound(StoreUnavailable):
    """A put named a lease etcd no longer has (expired, revoked, restored)."""


def connect(target: EtcdConnection | EtcdAccess | Callable[[], object] | Sequence[str], *,
            timeout: float = _DEFAULT_TIMEOUT, observer: EtcdObserver | None = None) -> EtcdConnection:
    """The connection for an ``EtcdAccess`` (TLS, auth), a client factory, or
    plain ``http://host:port`` endpoints, reporting to ``observer``."""
    if isinstance(target, EtcdConnection):
        if observer is not None:
            raise ValueError("give the observer to the EtcdConnection passed in")
        return target
    if isinstance(target, EtcdAccess) or callable(target):
        return EtcdConnection(target, observer=observer)
    return EtcdConnection(EtcdAccess(tuple(target), timeout=timeout), observer=observer)


def prefix_end(prefix: bytes) -> bytes:
    """The range end that selects every key starting with ``prefix``."""
    return etcd3.utils.prefix_range_end(prefix)


# -- request building (pure protobuf, no I/O) -------------------------------------

def unchanged_since(start: bytes, end: bytes, revision: int) -> Compare:
    """No key in [start, end) was created or modified after ``revision``."""
    return Compare(key=start, range_end=end, target=Compare.MOD, result=Compare.LESS,
                   mod_revision=revision + 1)


def exists(key: bytes) -> Compare:
    return Compare(key=key, target=Compare.VERSION, result=Compare.GREATER, version=0)


def put(key: bytes, value: bytes, lease: int = 0) -> Op:
    return Op(request_put=etcdrpc.PutRequest(key=key, value=value, lease=lease))


def delete(key: bytes) -> Op:
    return Op(request_delete_range=etcdrpc.DeleteRangeRequest(key=key))


class EtcdKV:
    """Blocking etcd calls over one connection. Thread-safe (gRPC channels are).

    ``connection`` is an ``EtcdConnection`` or, for tests, an etcd3 client
    (then ``observer`` is told about every call, ``EtcdObserver``).
    """

    def __init__(self, connection: EtcdConnection | Any, *, observer: EtcdObserver | None = None) -> None:
        if not isinstance(connection, EtcdConnection):
            client = connection
            connection = EtcdConnection(lambda: client, observer=observer)
        elif observer is not None:
            raise ValueError("give the observer to the EtcdConnection passed in")
        self.connection = connection

    @classmethod
    def of(cls, etcd: EtcdKV | EtcdConnection | EtcdAccess | Callable[[], object] | Sequence[str],
           observer: EtcdObserver | None = None) -> EtcdKV:
        """``etcd`` itself, or a client over ``connect(etcd)`` reporting to ``observer``."""
        if isinstance(etcd, EtcdKV):
            if observer is not None:
                raise ValueError("give the observer to the EtcdKV passed in")
            return etcd
        return cls(connect(etcd, observer=observer))

    @property
    def client(self) -> Any:
        """The connection's current etcd3 client."""
        return self.connection.client()

    def close(self) -> None:
        self.connection.close()

    def _call(self, what: str, fn: Callable, *args):
        return self.connection.run(what, self._marked, what, fn, args)

    def _marked(self, what: str, fn: Callable, args: tuple):
        try:
            return fn(*args)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND and "lease" in (exc.details() or ""):
                raise LeaseNotFound(f"{what}: {exc.details()}") from None
            # Marks the endpoint failed so the next call fails over; re-raises
            # (a private part of etcd3, listed in cluster/internals.py).
            self.connection.client()._manage_grpc_errors(exc)
            raise

    def _unary(self, stub: str, method: str, request: Any) -> Any:
        c = self.connection.client()
        return getattr(getattr(c, stub), method)(
            request, c.timeout or _DEFAULT_TIMEOUT, credentials=c.call_credentials, metadata=c.metadata)

    def _txn(self, request: etcdrpc.TxnRequest) -> etcdrpc.TxnResponse:
        return self._unary("kvstub", "Txn", request)

    def _range(self, request: etcdrpc.RangeRequest) -> etcdrpc.RangeResponse:
        return self._unary("kvstub", "Range", request)

    # -- reads ------------------------------------------------------------------------

    def read_ranges(self, ranges: Sequence[tuple[bytes, bytes]]) -> tuple[int, list[KeyValues]]:
        """Read several key ranges at one revision (one round trip)."""
        if len(ranges) == 1:
            start, end = ranges[0]
            response = self._call("range", self._range, etcdrpc.RangeRequest(key=start, range_end=end))
            return response.header.revision, [[(kv.key, kv.value, kv.mod_revision) for kv in response.kvs]]
        request = etcdrpc.TxnRequest(success=[
            Op(request_range=etcdrpc.RangeRequest(key=start, range_end=end)) for start, end in ranges
        ])
        response = self._call("read", self._txn, request)
        return response.header.revision, [
            [(kv.key, kv.value, kv.mod_revision) for kv in r.response_range.kvs]
            for r in response.responses
        ]

    def read_prefix(self, prefix: bytes, *, keys_only: bool = False) -> tuple[int, KeyValues]:
        request = etcdrpc.RangeRequest(key=prefix, range_end=prefix_end(prefix), keys_only=keys_only)
        response = self._call("range", self._range, request)
        return response.header.revision, [(kv.key, kv.value, kv.mod_revision) for kv in response.kvs]

    # -- writes -----------------------------------------------------------------------

    def commit_groups(self, groups: Sequence[tuple[Sequence[Compare], Sequence[Op]]]) -> tuple[int, list[bool]]:
        """Commit independent conditional groups in ONE transaction.

        Each group becomes a nested transaction (etcd >= 3.3): its compares
        guard only its own operations, so one AOR's conflict leaves the
        others' writes in place and the outer transaction always succeeds.
        Returns the revision and each group's outcome.
        """
        request = etcdrpc.TxnRequest(success=[
            Op(request_txn=etcdrpc.TxnRequest(compare=compares, success=ops))
            for compares, ops in groups
        ])
        response = self._call("commit", self._txn, request)
        return response.header.revision, [r.response_txn.succeeded for r in response.responses]

    def grant(self, ttl: int) -> int:
        response = self._call("lease grant", self._unary, "leasestub", "LeaseGrant",
                              etcdrpc.LeaseGrantRequest(TTL=ttl))
        return response.ID

    # -- watch ------------------------------------------------------------------------

    def watch(self, prefix: bytes, start_revision: int) -> WatchStream:
        return WatchStream(self, prefix, start_revision)


class WatchStream:
    """One etcd watch on a prefix, iterated in a worker thread.

    Owns its gRPC stream (not etcd3's shared watcher thread, whose 0.13
    error path raises NameError and so never reports a broken stream), which
    lets the caller ask for progress notifications to prove the stream is
    alive and cancel it from any thread.
    """

    def __init__(self, kv: EtcdKV, prefix: bytes, start_revision: int) -> None:
        self._kv = kv
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._requests.put(etcdrpc.WatchRequest(create_request=etcdrpc.WatchCreateRequest(
            key=prefix, range_end=prefix_end(prefix), start_revision=start_revision)))
        self._call = None
        self._lock = threading.Lock()
        self._cancelled = False

    def _request_iter(self) -> Iterator[etcdrpc.WatchRequest]:
        while True:
            request = self._requests.get()
            if request is None:
                return
            yield request

    def responses(self) -> Iterator[etcdrpc.WatchResponse]:
        """Blocking iterator of raw watch responses; raises StoreUnavailable
        when the stream fails and simply ends once cancelled."""
        connection = self._kv.connection
        try:
            c = connection.client()
            with self._lock:
                if self._cancelled:
                    return
                stub = etcdrpc.WatchStub(c.channel)
                call = stub.Watch(self._request_iter(), credentials=c.call_credentials,
                                  metadata=c.metadata)
                self._call = call
            yield from call
        except (grpc.RpcError, etcd3.exceptions.Etcd3Exception, ValueError) as exc:
            if self._cancelled and isinstance(exc, grpc.RpcError):
                return
            raise connection.translate("watch", exc) from None
        if not self._cancelled:
            raise StoreUnavailable("watch: stream ended")

    def request_progress(self) -> None:
        """Ask etcd for a progress notification (etcd >= 3.4): any answer
        proves the stream still delivers."""
        self._requests.put(etcdrpc.WatchRequest(progress_request=etcdrpc.WatchProgressRequest()))

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            call = self._call
        self._requests.put(None)
        if call is not None:
            call.cancel()
