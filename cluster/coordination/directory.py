"""The base of the synchronous etcd directories the CLI uses (bans, destination sets)."""

from __future__ import annotations

from typing import Any

from .connection import EtcdAccess, EtcdConnection


class EtcdDirectory:
    """Keys under ``prefix`` read and changed synchronously, each call named
    ``"<NAME> <op>"`` in errors; ``close()`` when done."""

    __slots__ = ("_connection", "prefix")
    NAME = "etcd"

    def __init__(self, etcd: EtcdConnection | EtcdAccess, prefix: str) -> None:
        self._connection = etcd if isinstance(etcd, EtcdConnection) else EtcdConnection(etcd)
        self.prefix = prefix

    def close(self) -> None:
        self._connection.close()

    def _call(self, op: str, method: str, *args: Any) -> Any:
        return self._connection.call(f"{self.NAME} {op}", method, *args)
