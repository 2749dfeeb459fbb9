"""SIGTERM drains a worker: it leaves the ring at once and still finishes the
transactions it has in flight before it exits (DESIGN §4)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from cluster.sharding.ring import Ring
from tests.e2e.harness import SCENARIOS, UpCluster, free_port_pair, wait_for

pytestmark = pytest.mark.e2e


def _node_status(cluster: UpCluster, node_id: str) -> dict | None:
    for member in cluster.status()["members"]:
        if member["id"] == node_id:
            return member["status"]
    return None


def test_sigterm_drain_finishes_in_flight_call(etcd_server, tmp_path):
    cluster = UpCluster(tmp_path, workers=2, etcd=etcd_server.endpoint).start()
    try:
        wait_for(lambda: len(cluster.worker_pids()) == 2, what="two workers")
        uas_port, uac_port = free_port_pair(), free_port_pair()
        call_id = "drain-test-1@127.0.0.1"
        owner = Ring(sorted(cluster.worker_pids())).owner(call_id.encode())
        pid = cluster.worker_pids()[owner]
        uas = subprocess.Popen(
            ["sipp", "-sf", str(SCENARIOS / "slow_uas.xml"), "-i", "127.0.0.1", "-p", str(uas_port),
             "-m", "1", "-nostdin", "-timeout", "60s",
             "-timeout_error"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        uac = subprocess.Popen(
            ["sipp", f"127.0.0.1:{cluster.port}", "-sf", str(SCENARIOS / "uac.xml"), "-s", "callee", "-d", "200",
             "-m", "1", "-i", "127.0.0.1", "-p", str(uac_port), "-cid_str", "drain-test-%u@%s",
             "-key", "domain", f"127.0.0.1:{uas_port}", "-key", "caller", "caller",
             "-key", "caller_domain", "bench.invalid", "-nostdin", "-timeout", "60s",
             "-timeout_error", "-trace_err", "-trace_msg"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # The INVITE is ringing on its owner: a proxied call in flight.
        wait_for(lambda: (_node_status(cluster, owner) or {}).get("proxy_contexts", 0) >= 1,
                 timeout=30, what="the call in flight on its owner")
        os.kill(pid, signal.SIGTERM)
        # The caller still gets its 200, ACK and BYE through (the ACK and BYE
        # go to the surviving worker once the owner has left the ring).
        assert uac.wait(90) == 0, "".join(
            p.read_text()[-3000:] for p in tmp_path.glob("uac_*_errors.log")) + cluster.logs()
        assert uas.wait(90) == 0
        wait_for(lambda: not Path(f"/proc/{pid}").exists(), timeout=60, what="drained worker exit")
        log = (tmp_path / "up" / f"{owner}.log").read_text()
        drained = [json.loads(line) for line in log.splitlines()
                   if line.startswith("{") and '"worker drained"' in line]
        assert drained and drained[-1]["in_flight"] == 0, log[-2000:]
        # The 200 went through the owner's transaction, not statelessly via
        # the survivor (which would mean the owner died with the call).
        survivor = next(w for w in cluster.worker_pids() if w != owner)
        stats = (_node_status(cluster, survivor) or {}).get("stats", {})
        assert stats.get("tu_StrayResponse", 0) == 0, stats
    finally:
        cluster.stop()
