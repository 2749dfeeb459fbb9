"""Run one node until SIGTERM/SIGINT, then shut it down gracefully.

Graceful shutdown is a deadline, not a kill (STYLE §3): a worker leaves the
ring at once and keeps serving its in-flight transactions up to the drain
timeout; an edge leaves the membership so workers stop using it.

Observability is wired here (DESIGN §9): tracing from the ``OTEL_*``
environment (off unless an exporter is configured), the node's metrics on
``/metrics``; spans still queued are flushed on the way out.
"""

from __future__ import annotations

import logging
import signal

import trio

from cluster.config import Config

from .collector import Collector
from .http import StatusServer

log = logging.getLogger("sipcluster.node")


def make_node(role: str, config: Config, *, tracing=None, collector: Collector | None = None):
    """The node for ``role``, with tracing (None: off) and its garbage collector policy."""
    if role == "edge":
        from .edge.node import EdgeNode
        return EdgeNode(config, tracing=tracing, collector=collector)
    if role == "worker":
        from .worker.node import WorkerNode
        return WorkerNode(config, tracing=tracing, collector=collector)
    raise ValueError(f"unknown role {role!r}")


def node_metrics(role: str, node):
    """The metrics endpoint of ``node``."""
    if role == "edge":
        from .edge.metrics import edge_metrics
        return edge_metrics(node)
    from .worker.metrics import worker_metrics
    return worker_metrics(node)


async def run_node(role: str, config: Config) -> int:
    from cluster.coordination.connection import EtcdAccess
    # A wrong etcd user or password does not heal by retrying: say so and
    # stop, rather than run a node that never joins. (An unreachable etcd,
    # an expired token or certificate are retried by the node instead.)
    rejected = await trio.to_thread.run_sync(
        EtcdAccess.from_config(config.cluster).rejected_credentials, abandon_on_cancel=True)
    if rejected is not None:
        log.error("etcd rejects this node's credentials (cluster.etcd_user, cluster.etcd_password): %s",
                  rejected)
        return 2
    from cluster.observability.tracing import Tracing
    tracing = Tracing.from_environment(role, config.cluster.node_id)
    if tracing is not None:
        log.info("tracing on", extra={"sampling_bound": tracing.bound / float(1 << 64)})
    collector = Collector()
    node = make_node(role, config, tracing=tracing, collector=collector)
    metrics = node_metrics(role, node)
    try:
        return await _serve(role, config, node, metrics)
    finally:
        collector.uninstall()
        if tracing is not None:
            # Off the loop: the exporter may wait for its endpoint.
            await trio.to_thread.run_sync(tracing.shutdown)


async def _serve(role: str, config: Config, node, metrics) -> int:
    # Short collector pauses whatever the number of live transactions
    # (nodes/collector.py).
    node.collector.install()
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(node.collector.run)
            if config.http.listen:
                server = StatusServer(node, metrics.render)
                node.http_url = await nursery.start(server.run, config.http.listen)
            await nursery.start(node.run)
            async for signum in signals:
                log.info("stopping", extra={"signal": signal.Signals(signum).name})
                break
            if role == "worker":
                await node.drain()
            elif node.membership is not None:
                with trio.move_on_after(5):
                    await node.membership.leave()
            nursery.cancel_scope.cancel()
    return 0
