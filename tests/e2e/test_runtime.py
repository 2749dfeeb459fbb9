"""The cluster runtime end to end: `sipcluster up` as separate processes,
real etcd, real SIP clients (sipsak, SIPp), loopback only."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest

from tests.e2e.harness import ROOT, SCENARIOS, UpCluster, options, send_udp, wait_for

pytestmark = pytest.mark.e2e

LEASE_TTL = 5  # the config default the cluster runs with


@pytest.fixture(scope="module")
def cluster(etcd_server, tmp_path_factory):
    up = UpCluster(tmp_path_factory.mktemp("up"), workers=3, etcd=etcd_server.endpoint).start()
    wait_for(lambda: len(up.worker_pids()) == 3, what="three workers in the ring")
    yield up
    up.stop()


def test_options_answered_by_sipsak_over_udp_and_tcp(cluster):
    assert shutil.which("sipsak"), "sipsak must be installed (ops/dev.sh installs it)"
    for transport in ("udp", "tcp"):
        result = subprocess.run(
            ["sipsak", "-E", transport, "-s", f"sip:127.0.0.1:{cluster.port}", "-vv"],
            capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "200 OK" in result.stdout


def test_options_answered_by_sipp(cluster, tmp_path):
    assert shutil.which("sipp"), "SIPp must be installed (sip-tester)"
    for transport, flag in (("udp", "u1"), ("tcp", "t1")):
        result = subprocess.run(
            ["sipp", f"127.0.0.1:{cluster.port}", "-sf", str(SCENARIOS / "options_uac.xml"),
             "-t", flag, "-m", "50", "-r", "50", "-l", "20", "-i", "127.0.0.1", "-p", "0",
             "-nostdin", "-timeout", "60s", "-timeout_error",
             "-trace_stat", "-stf", str(tmp_path / f"stat-{transport}.csv")],
            capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def test_call_ids_spread_by_ring_share_and_retransmissions_stick(cluster):
    shares = {m["id"]: m["share"] for m in cluster.status()["members"] if m["role"] == "worker"}
    assert len(shares) == 3
    counts = {w: 0 for w in shares}
    n = 1000
    for i in range(n):
        status, headers = options(cluster.port, f"spread-{i}-{uuid.uuid4().hex[:6]}")
        if status == 0:  # a lost datagram on a loaded machine: retry once
            status, headers = options(cluster.port, f"spread-{i}-retry")
        assert status == 200
        counts[headers["x-sipcluster-shard"]] += 1
    for worker, share in shares.items():
        expected = share * n
        assert abs(counts[worker] - expected) <= 0.15 * expected + 5, (counts, shares)
    # Retransmissions (same Call-ID, branch and CSeq) reach the same shard.
    call_id, branch = f"retrans-{uuid.uuid4().hex}", f"z9hG4bK{uuid.uuid4().hex[:12]}"
    shards = {options(cluster.port, call_id, branch=branch)[1].get("x-sipcluster-shard")
              for _ in range(5)}
    assert len(shards) == 1 and None not in shards


def test_malformed_input_answered_or_dropped_and_edge_keeps_serving(cluster):
    port = cluster.port
    # Garbage: dropped (no answer), counted.
    assert send_udp(port, b"\x00\x01garbage\xff" * 10, expect_reply=False, timeout=1.0) is None
    # A malformed request with a readable Call-ID reaches a worker: 400 with a reason.
    bad = (b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKx;;\r\n"
           b"From: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: malformed-1\r\n"
           b"CSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
    reply = send_udp(port, bad, expect_reply=True, timeout=5.0)
    assert reply and reply.startswith(b"SIP/2.0 400 "), reply
    assert b"Warning: 399" in reply
    # Truncated (Content-Length larger than the datagram): 400.
    trunc = bad.replace(b";;", b"").replace(b"Content-Length: 0", b"Content-Length: 50")
    reply = send_udp(port, trunc.replace(b"malformed-1", b"malformed-2"), expect_reply=True, timeout=5.0)
    assert reply and reply.startswith(b"SIP/2.0 400 "), reply
    # Oversized: answered 513 by the edge itself.
    big = trunc.replace(b"Content-Length: 50", b"X-Pad: " + b"a" * 70000 + b"\r\nContent-Length: 0")
    with __import__("socket").socket(__import__("socket").AF_INET, __import__("socket").SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(("127.0.0.1", port))
        s.sendall(big)
        data = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
    assert data.startswith(b"SIP/2.0 513 ") or data == b"", data[:100]
    # A malformed response: dropped.
    assert send_udp(port, b"SIP/2.0 999999 Nope\r\nCall-ID: r\r\n\r\n", expect_reply=False,
                    timeout=1.0) is None
    # ... and the edge still serves.
    assert options(port)[0] == 200
    edge = next(m for m in cluster.status()["members"] if m["role"] == "edge")
    stats = edge["status"]["stats"]
    assert stats.get("drop_no_call_id", 0) >= 1


def test_kill_9_worker_calls_move_and_worker_rejoins(cluster):
    pids = cluster.worker_pids()
    victim, pid = sorted(pids.items())[0]
    # Call-IDs owned by the victim, found by asking the cluster.
    owned = []
    i = 0
    while len(owned) < 20:
        call_id = f"owned-{i}-{uuid.uuid4().hex[:6]}"
        i += 1
        status, headers = options(cluster.port, call_id)
        if headers.get("x-sipcluster-shard") == victim:
            owned.append(call_id)
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()

    def all_answered():
        return all(options(cluster.port, c, timeout=0.5)[0] == 200 for c in owned)

    wait_for(all_answered, timeout=60, what="Call-IDs of the killed worker answered again")
    elapsed = time.monotonic() - killed_at
    assert elapsed <= LEASE_TTL + 2 + 10, elapsed  # TTL + 2 s, plus slack for a loaded CI box
    # The supervisor restarts it; it rejoins with the same id and a new pid.
    wait_for(lambda: cluster.worker_pids().get(victim) not in (None, pid), timeout=60,
             what="restarted worker back in the ring")
    wait_for(lambda: len(cluster.worker_pids()) == 3, timeout=30, what="three workers again")


def test_etcd_restart_cluster_recovers(cluster, etcd_server):
    assert options(cluster.port)[0] == 200
    etcd_server.stop()
    # With etcd down the nodes keep serving with the last ring...
    assert wait_for(lambda: options(cluster.port, timeout=1)[0] == 200, timeout=30)
    etcd_server.start()
    # ... and recover without a restart: all members registered again.
    wait_for(lambda: len(cluster.worker_pids()) == 3, timeout=60, what="members after etcd restart")
    assert options(cluster.port)[0] == 200


def test_responses_carry_rport_for_the_client(cluster):
    import re
    status, headers = options(cluster.port, f"rport-{uuid.uuid4().hex[:8]}")
    assert status == 200
    # RFC 3581 §4: the server fills rport with the source port it saw.
    assert re.search(r";rport=\d+", headers["via"]), headers["via"]


def test_up_stops_and_shows_the_message_of_a_node_with_a_configuration_error(tmp_path, etcd_server):
    """A node that exits on its configuration is not restarted forever: `up`
    stops with status 2 and prints the node's own message."""
    up = UpCluster(tmp_path, workers=1, etcd=etcd_server.endpoint,
                   env={"SIPCLUSTER_WORKER_NO_SUCH_FIELD": "1"})
    argv = [sys.executable, "-m", "cluster.cli", "up", "--workers", "1",
            "--listen", f"127.0.0.1:{up.port}", "--state-dir", str(tmp_path / "up"),
            "--etcd", etcd_server.endpoint]
    done = subprocess.run(argv, capture_output=True, text=True, env=up.env, cwd=ROOT, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "configuration error" in output
    assert "SIPCLUSTER_WORKER_NO_SUCH_FIELD" in output, output
    assert "; restarting" not in output
