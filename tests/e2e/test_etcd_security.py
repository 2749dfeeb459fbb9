"""A cluster on an etcd with TLS, client-certificate auth and RBAC (DESIGN §8).

An edge and a worker run as separate processes configured only by the
``SIPCLUSTER_CLUSTER_ETCD_*`` variables (CA, client certificate and key,
user, password); ``sipcluster user``, ``sipcluster status`` and the SIP log
switch use the same variables. Registration, digest authentication with the
nonce key the first worker put in etcd, and OPTIONS work; an etcd restart
(which forgets every auth token) does not stop them; a wrong password stops a
node at start with one clear line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from cluster.coordination.connection import EtcdConnection
from cluster.coordination.secrets import secret_key
from cluster.observability.sip_logging import debug_key
from tests.e2e.harness import Registrant, free_port_pair, options, wait_for
from tests.support.etcd import free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def _env(secure_etcd, prefix: str, **extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SIPCLUSTER_", "OTEL_"))}
    return {**base, **secure_etcd.cluster_env(), "SIPCLUSTER_CLUSTER_PREFIX": prefix,
            "SIPCLUSTER_LOG_FORMAT": "text", "OTEL_TRACES_EXPORTER": "none", **extra}


def _cli(env: dict[str, str], *args: str, input: str | None = None,
         module: str = "cluster.cli") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=60, input=input)


class Node:
    def __init__(self, role: str, env: dict[str, str], log: Path) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "cluster.cli", role], env=env, cwd=ROOT,
                                         stdout=out, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def test_a_cluster_on_a_tls_etcd_with_auth_registers_answers_and_survives_lost_tokens(secure_etcd, tmp_path):
    prefix = f"/tls-e2e-{uuid.uuid4().hex[:8]}"
    sip = free_port_pair()
    env = _env(secure_etcd, prefix)
    nodes = [
        Node("worker", {**env, "SIPCLUSTER_CLUSTER_NODE_ID": "w1", "SIPCLUSTER_WORKER_DRAIN_TIMEOUT": "1"},
             tmp_path / "worker.log"),
        Node("edge", {**env, "SIPCLUSTER_CLUSTER_NODE_ID": "e1",
                      "SIPCLUSTER_EDGE_LISTEN": f"udp:127.0.0.1:{sip},tcp:127.0.0.1:{sip}"},
             tmp_path / "edge.log"),
    ]
    try:
        added = _cli(env, "user", "add", "alice@localhost", "--password-stdin", input="pw-alice\n")
        assert added.returncode == 0, added.stderr
        wait_for(lambda: options(sip)[0] == 200, timeout=60, what="an OPTIONS answered through the edge")
        status = _cli(env, "status", "--json")
        assert status.returncode == 0, status.stderr
        assert sorted(m["id"] for m in json.loads(status.stdout)["members"]) == ["e1", "w1"]

        registrant = Registrant(sip, "alice", "pw-alice")
        try:
            answer = registrant.register([f"<sip:alice@127.0.0.1:{registrant.agent.port}>"], expires=600)
            assert answer is not None and answer.status == 200, answer

            # The nonce key the worker signs with is the cluster's random one in etcd.
            connection = EtcdConnection(secure_etcd.access())
            try:
                nonce, _ = connection.run("get", lambda: connection.client().get(secret_key(prefix, "nonce")))
                location = connection.run("get", lambda: connection.client().get_prefix_response(
                    f"{prefix}/location/"))
            finally:
                connection.close()
            assert nonce is not None and len(nonce) == 32
            assert location.kvs, "the registration is stored in etcd"

            switched = _cli(env, "--call-id", "marked@x", "--for", "60",
                            module="cluster.observability.sip_logging")
            assert switched.returncode == 0, switched.stderr
            assert debug_key(prefix) in switched.stdout

            # Simple tokens live in etcd's memory: a restart invalidates every
            # node's token. The nodes authenticate again and keep working.
            secure_etcd.stop()
            secure_etcd.start()

            def registers() -> bool:
                reply = registrant.register([f"<sip:alice@127.0.0.1:{registrant.agent.port}>"], expires=600)
                return reply is not None and reply.status == 200
            wait_for(registers, timeout=60, what="a REGISTER stored after the etcd restart")
            wait_for(lambda: options(sip)[0] == 200, timeout=60, what="OPTIONS after the etcd restart")
        finally:
            registrant.close()
        assert all(node.proc.poll() is None for node in nodes)
        assert "Traceback" not in (tmp_path / "worker.log").read_text()
    finally:
        for node in reversed(nodes):
            node.stop()


def test_a_wrong_etcd_password_stops_the_node_at_start_with_a_clear_line(secure_etcd, tmp_path):
    env = _env(secure_etcd, f"/tls-bad-{uuid.uuid4().hex[:8]}",
               SIPCLUSTER_CLUSTER_ETCD_PASSWORD="not-the-password",
               SIPCLUSTER_HTTP_LISTEN=f"127.0.0.1:{free_port()}")
    node = Node("worker", env, tmp_path / "worker.log")
    try:
        assert node.proc.wait(timeout=60) == 2
    finally:
        node.stop()
    log = (tmp_path / "worker.log").read_text()
    assert "etcd rejects this node's credentials" in log and "invalid user ID or password" in log, log
    assert "Traceback" not in log
    # The CLI names the cause the same way, without a traceback.
    listing = _cli(env, "user", "list")
    assert listing.returncode == 1 and "authentication failed" in listing.stderr
    assert "Traceback" not in listing.stderr


def test_a_node_with_an_expired_client_certificate_logs_why_and_recovers_with_a_renewed_one(
        secure_etcd, tmp_path):
    cert, key = secure_etcd.pki.client("edge-expiring", "sipcluster-node", expired=True)
    prefix = f"/tls-exp-{uuid.uuid4().hex[:8]}"
    http = free_port()
    env = _env(secure_etcd, prefix, SIPCLUSTER_CLUSTER_ETCD_CERT=str(cert),
               SIPCLUSTER_CLUSTER_ETCD_KEY=str(key), SIPCLUSTER_CLUSTER_NODE_ID="e-exp",
               SIPCLUSTER_EDGE_LISTEN=f"udp:127.0.0.1:{free_port_pair()}",
               SIPCLUSTER_HTTP_LISTEN=f"127.0.0.1:{http}")
    node = Node("edge", env, tmp_path / "edge.log")
    try:
        wait_for(lambda: "expired at" in (tmp_path / "edge.log").read_text() or node.proc.poll() is not None,
                 timeout=60, what="the expired certificate named in the log")
        assert node.proc.poll() is None, (tmp_path / "edge.log").read_text()
        # The operator (cert-manager) renews the certificate in place.
        secure_etcd.pki.client("edge-expiring", "sipcluster-node")
        status_env = _env(secure_etcd, prefix)

        def joined() -> bool:
            result = _cli(status_env, "status", "--json")
            return result.returncode == 0 and [m["id"] for m in json.loads(result.stdout)["members"]] == ["e-exp"]
        wait_for(joined, timeout=90, interval=0.5, what="the edge registered with the renewed certificate")
        assert node.proc.poll() is None
    finally:
        node.stop()
    assert "Traceback" not in (tmp_path / "edge.log").read_text()
