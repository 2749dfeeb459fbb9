"""The registrar's only contact with etcd3 and gRPC.

Everything here is blocking (python3-etcd3 is synchronous gRPC) and is meant
to run in a worker thread (``trio.to_thread.run_sync``). It speaks etcd's
protobufs directly rather than through etcd3's helper objects for two
reasons: a group commit needs *nested* transactions and the response
header's revision, which ``Etcd3Client.transaction`` does not return, and a
batch of a few hundred operations is built noticeably faster this way.

Every gRPC or etcd3 failure leaves this module as ``StoreUnavailable``
(``LeaseNotFound`` for a put whose lease is gone), in one place: ``_call``.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Iterator, Sequence
from urllib.parse import urlsplit

import etcd3
import grpc
from etcd3 import etcdrpc

from .store import StoreUnavailable

__all__ = [
    "Compare", "EtcdKV", "LeaseNotFound", "Op", "WatchStream", "connect", "prefix_end",
]

Compare = etcdrpc.Compare
Op = etcdrpc.RequestOp
KeyValues = list[tuple[bytes, bytes, int]]  # (key, value, mod_revision)

# After an UNAVAILABLE, python3-etcd3 refuses an endpoint for ``time_retry``
# seconds (300 by default), which would outlast any etcd restart we want to
# ride through; one second keeps failover working without that blackout.
_ENDPOINT_RETRY = 1.0
# gRPC's default reconnect backoff grows to 120 s: far longer than an etcd
# restart. Cap it so the store and the cache resume within a second.
_GRPC_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
# Unary calls never wait forever, whatever the client was built with: a
# hung etcd must surface as StoreUnavailable (503), not stall the batcher.
_DEFAULT_TIMEOUT = 5.0


class LeaseNotFound(StoreUnavailable):
    """A put named a lease etcd no longer has (expired, revoked, restored)."""


def connect(target: Callable[[], object] | Sequence[str], *, timeout: float = _DEFAULT_TIMEOUT):
    """An etcd3 client from a factory or from ``http://host:port`` endpoints."""
    if callable(target):
        return target()
    endpoints = []
    for url in target:
        parts = urlsplit(url if "//" in url else f"http://{url}")
        if parts.scheme not in ("http", ""):
            raise ValueError(f"{url}: only plain http endpoints here; pass a client factory for TLS")
        endpoints.append(etcd3.Endpoint(parts.hostname or "127.0.0.1", parts.port or 2379,
                                        secure=False, time_retry=_ENDPOINT_RETRY, opts=_GRPC_OPTIONS))
    if not endpoints:
        raise ValueError("no etcd endpoints")
    return etcd3.MultiEndpointEtcd3Client(endpoints=endpoints, timeout=timeout, failover=True)


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
    """Blocking etcd calls for one client. Thread-safe (gRPC channels are)."""

    def __init__(self, client) -> None:
        self.client = client

    def close(self) -> None:
        self.client.close()

    def _call(self, what: str, fn: Callable, *args):
        client = self.client
        try:
            try:
                return fn(*args)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND and "lease" in (exc.details() or ""):
                    raise LeaseNotFound(f"{what}: {exc.details()}") from None
                # Marks the endpoint failed so the next call fails over.
                client._manage_grpc_errors(exc)
        except StoreUnavailable:
            raise
        except (grpc.RpcError, etcd3.exceptions.Etcd3Exception, ValueError) as exc:
            # ValueError: etcd3's "Trying to use a failed node".
            detail = exc.details() if isinstance(exc, grpc.RpcError) else (str(exc) or type(exc).__name__)
            raise StoreUnavailable(f"{what}: {detail}") from None
        raise StoreUnavailable(f"{what}: etcd error")  # pragma: no cover - re-raised above

    def _txn(self, request: etcdrpc.TxnRequest) -> etcdrpc.TxnResponse:
        c = self.client
        return c.kvstub.Txn(request, c.timeout or _DEFAULT_TIMEOUT, credentials=c.call_credentials,
                            metadata=c.metadata)

    def _range(self, request: etcdrpc.RangeRequest) -> etcdrpc.RangeResponse:
        c = self.client
        return c.kvstub.Range(request, c.timeout or _DEFAULT_TIMEOUT, credentials=c.call_credentials,
                              metadata=c.metadata)

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
        c = self.client
        request = etcdrpc.LeaseGrantRequest(TTL=ttl)
        response = self._call("lease grant", lambda: c.leasestub.LeaseGrant(
            request, c.timeout or _DEFAULT_TIMEOUT, credentials=c.call_credentials, metadata=c.metadata))
        return response.ID

    # -- watch ------------------------------------------------------------------------

    def watch(self, prefix: bytes, start_revision: int) -> "WatchStream":
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
        c = self._kv.client
        try:
            with self._lock:
                if self._cancelled:
                    return
                stub = etcdrpc.WatchStub(c.channel)
                self._call = stub.Watch(self._request_iter(), credentials=c.call_credentials,
                                        metadata=c.metadata)
            for response in self._call:
                yield response
        except grpc.RpcError as exc:
            if self._cancelled:
                return
            raise StoreUnavailable(f"watch: {exc.details() or exc.code()}") from None
        except (etcd3.exceptions.Etcd3Exception, ValueError) as exc:
            raise StoreUnavailable(f"watch: {exc or type(exc).__name__}") from None
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
