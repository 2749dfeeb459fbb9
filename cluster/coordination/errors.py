"""The project's own error types for coordination (etcd) failures.

Following tooz (STYLE §4), nothing above the etcd adapter ever sees a gRPC or
python3-etcd3 exception: ``cluster.coordination.etcd`` turns each of them into
a ``CoordinationError`` at exactly one boundary (``cluster.coordination.connection``), so callers (the membership
service, the registrar's location store) catch one type and decide between
"retry later" and "give up" without knowing the client library.

This module imports nothing from etcd3 or grpc, so code that only needs to
catch these errors stays light.
"""

from __future__ import annotations

__all__ = ["CoordinationError", "EtcdAuthError", "EtcdCredentialsRejected", "WatchCompacted"]


class CoordinationError(Exception):
    """etcd could not be used for an operation: unreachable, timed out,
    refused (auth, permissions), or a watch stream that failed or ended.

    ``reason`` is a short human-readable text naming the operation
    (``"put: etcd connection failed"``). Every such error is worth retrying
    after a pause; none of them says anything about the data.
    """

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason!r})"


class EtcdAuthError(CoordinationError):
    """etcd refused who we are: a wrong user or password, a token it no
    longer accepts, a permission the user's role lacks, or a client
    certificate outside its validity period.

    Still "etcd unavailable" for every caller (retry later: a rotated
    password or certificate may arrive), but counted apart and worth an
    operator's attention rather than a wait.
    """

    __slots__ = ()


class EtcdCredentialsRejected(EtcdAuthError):
    """etcd answered that the user name or password is wrong.

    Unlike an expired token or an unreachable etcd this does not heal by
    waiting, so a node that meets it at start-up stops with this reason.
    """

    __slots__ = ()


class WatchCompacted(CoordinationError):
    """A watch asked for history that etcd has already compacted away.

    Resuming from a later revision would silently skip changes, so the only
    correct recovery is a full read of the range, then a watch from just
    after that read's revision. ``compact_revision`` is the oldest revision
    etcd can still replay.
    """

    __slots__ = ("compact_revision",)

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"watch: history compacted up to revision {compact_revision}")
        self.compact_revision = compact_revision
