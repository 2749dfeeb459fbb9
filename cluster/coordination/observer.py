"""How an etcd client reports its operations to whoever watches them.

The clients (``EtcdStore``, ``cluster.registrar.etcd_kv.EtcdKV``) take an
``EtcdObserver`` at construction and report every operation from their one
error boundary, so a metrics observer sees each call, the failed ones too,
without the clients knowing about metrics and without anyone wrapping their
methods. Observers are called from trio's worker threads.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol, TypeVar

__all__ = ["EtcdObserver", "observed"]

T = TypeVar("T")


class EtcdObserver(Protocol):
    def operation(self, op: str, elapsed_ns: int, error: BaseException | None) -> None:
        """``op`` ended after ``elapsed_ns``; ``error`` is what it raised (the
        client's own error type), None when it succeeded. A ``watch`` op is
        the start of a watch or one wait for its news."""


def observed(observer: EtcdObserver, op: str, fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)``, reported to ``observer`` however it ends."""
    started = time.perf_counter_ns()
    error: BaseException | None = None
    try:
        return fn(*args)
    except BaseException as raised:
        error = raised
        raise
    finally:
        observer.operation(op, time.perf_counter_ns() - started, error)
