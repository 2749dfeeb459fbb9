"""``sipcluster up`` with TLS and WSS listeners and a certificate from a test
CA, for the end-to-end tests with real clients (issue 20 part 5)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.e2e.harness import UpCluster, free_port_pair, wait_for


def start_secure(etcd_endpoint: str, state_dir: Path, pki, *, transports: tuple[str, ...] = ("tls",),
                 env: dict[str, str] | None = None, workers: int = 2) -> UpCluster:
    """A cluster on a UDP+TCP port plus one port per entry of ``transports``
    (``tls``, ``wss``), reachable as ``cluster.tls_port`` / ``cluster.wss_port``;
    MD5 digest challenges, which every client here answers."""
    ports = {transport: free_port_pair() for transport in transports}
    extra = [arg for transport, port in ports.items() for arg in ("--listen", f"{transport}:127.0.0.1:{port}")]
    up = UpCluster(state_dir, workers=workers, etcd=etcd_endpoint,
                   env={"SIPCLUSTER_WORKER_DIGEST_ALGORITHMS": "MD5", **(env or {})},
                   extra=[*extra, "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)]).start()
    for transport, port in ports.items():
        setattr(up, f"{transport}_port", port)
    wait_for(lambda: len(up.worker_pids()) == workers, what="the workers in the ring")
    return up


def edge_stats(cluster: UpCluster) -> dict:
    """The counters of the cluster's one edge."""
    (edge,) = [m for m in cluster.status()["members"] if m["role"] == "edge"]
    return edge["status"]["stats"]


def terminate(process: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM a client process the test started, SIGKILL if it lingers."""
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
