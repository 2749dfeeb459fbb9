"""Coordination through etcd: the runtime adapter around the pure sharding core.

    >>> store = EtcdStore(["http://127.0.0.1:2379"])
    >>> membership = EtcdMembership(store, "/sipcluster", member, ttl=5)
    >>> await nursery.start(membership.run)      # registered, first view read
    >>> async for view in membership.views():    # each change, latest wins
    ...     ring = view.ring()
    >>> await membership.leave()                 # SIGTERM drain: out of every ring now

``EtcdStore`` also carries the thin key/value, lease and transaction calls
the registrar's location store builds on (DESIGN §6). Every failure is a
``CoordinationError``. Every etcd client of the project is built by
``cluster.coordination.connection`` (TLS, auth, token renewal); cluster
secrets such as the digest nonce key come from ``.secrets``.
"""

from .errors import CoordinationError, WatchCompacted
from .etcd import EtcdStore, KeyValue, Lease, Snapshot, WatchStream
from .membership import EtcdMembership

__all__ = [
    "CoordinationError", "EtcdMembership", "EtcdStore", "KeyValue", "Lease", "Snapshot",
    "WatchCompacted", "WatchStream",
]
