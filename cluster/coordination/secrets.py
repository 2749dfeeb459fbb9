"""Cluster secrets: random keys made once per cluster and kept in etcd.

Every worker must hold the same HMAC key for stateless digest nonces
(DESIGN §8: any shard validates a nonce another one issued), and more keys
of this kind follow (Record-Route tokens, RFC 5626 flow tokens). None of
them may be derived from something public such as the etcd prefix or URLs:
anyone who can compute the key can mint nonces. So the first node that needs
a secret draws 32 random bytes and stores them at
``/<prefix>/secrets/<name>`` with a create-if-absent transaction; when two
nodes start at once, etcd keeps exactly one of the two values and both read
back the one it kept.

Who may read these keys is who may forge what they protect: with etcd RBAC
on, grant ``/<prefix>/secrets/`` to the workers' role only
(ops/guide/kubernetes.md, "etcd RBAC").
"""

from __future__ import annotations

import logging
import secrets as random_source

import trio

from .errors import CoordinationError

__all__ = ["MIN_SECRET_BYTES", "SECRET_BYTES", "cluster_secret", "secret_key", "wait_for_secret"]

log = logging.getLogger("sipcluster.coordination")

#: Bytes of a generated secret: a full SHA-256 block's worth of key for HMAC.
SECRET_BYTES = 32
#: A stored value shorter than this is refused rather than used.
MIN_SECRET_BYTES = 16


def secret_key(prefix: str, name: str) -> str:
    """``/<prefix>/secrets/<name>``."""
    if not name or "/" in name:
        raise ValueError(f"secret name {name!r} must be one non-empty key segment")
    root = prefix.strip("/")
    return f"/{root}/secrets/{name}" if root else f"/secrets/{name}"


async def cluster_secret(store, prefix: str, name: str) -> bytes:
    """The cluster's secret ``name``, created (random) if no node made it yet.

    ``store`` is a ``cluster.coordination.EtcdStore``. Raises
    ``CoordinationError`` when etcd cannot be used, or when the stored
    value is too short to be a key (someone wrote it by hand).
    """
    key = secret_key(prefix, name)
    candidate = random_source.token_bytes(SECRET_BYTES)
    t = store.transactions
    created, _ = await store.txn([t.version(key) == 0], [t.put(key, candidate)], [])
    if created:
        return candidate
    stored = await store.get(key)
    if stored is None:
        # Deleted between the two calls (an operator rotating it): use ours
        # next time round, never a value no other node has.
        raise CoordinationError(f"secret {key}: deleted while being read; try again")
    if len(stored.value) < MIN_SECRET_BYTES:
        raise CoordinationError(
            f"secret {key}: the stored value has {len(stored.value)} bytes, fewer than "
            f"{MIN_SECRET_BYTES}; delete the key to have a new one generated")
    return stored.value


async def wait_for_secret(store, prefix: str, name: str, *, retry_cap: float = 5.0) -> bytes:
    """``cluster_secret``, retried (with a logged reason) until etcd answers:
    a node that starts before etcd is usable waits for it instead of exiting."""
    delay = 0.2
    while True:
        try:
            return await cluster_secret(store, prefix, name)
        except CoordinationError as error:
            log.warning("cluster secret %r not read yet (%s); retrying in %.1f s", name, error.reason, delay)
            await trio.sleep(delay)
            delay = min(delay * 2, retry_cap)
