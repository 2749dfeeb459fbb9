"""Failover in the runtime (issue 18): `sipcluster up` as separate processes,
real etcd, SIPp calls with a hold time, a node killed or stalled mid-run.

Each test leaves the cluster as it found it (the supervisor restarts a
killed worker; a stopped one is continued), waiting for two workers again.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time
import uuid
from collections import Counter

import pytest

from cluster.sharding.ring import Ring
from tests.e2e.harness import Sipp, UpCluster, bound, options, wait_for
# The module's own cluster (two workers, alice), location sync and phone:
# the fixtures of the calls tests, instantiated again for this module (the
# tests name them as parameters, which ruff takes for redefinitions).
# ruff: noqa: F811
from tests.e2e.test_calls import Phone, cluster, locations, phone, received  # noqa: F401

pytestmark = pytest.mark.e2e

CALLS = 40


def members(cluster: UpCluster) -> list[dict]:
    """``status --json`` members; none while etcd cannot be read (a busy machine, a stall)."""
    try:
        return cluster.status()["members"]
    except AssertionError:
        return []


def edge_status(cluster: UpCluster) -> dict:
    return next((m["status"] or {} for m in members(cluster) if m["role"] == "edge"), {})


def acks(sipp: Sipp) -> int:
    return sum(1 for line in received(sipp) if line.startswith("ACK "))


def held_calls(phone: Phone, name: str, *, hold_ms: int) -> tuple[Sipp, Sipp]:
    """CALLS calls from alice to a new user at 20 calls/s, each held
    ``hold_ms`` then hung up by the caller; returns (caller, callee) started."""
    user = phone.user(name)
    uas = Sipp("uas_answer.xml", phone.workdir, name=f"{name}-uas", sets={"cluster": phone.remote},
               timeout=60, args=["-m", str(CALLS)])
    phone.started.append(uas.start())
    wait_for(lambda: bound(uas.port) or uas.process.poll() is not None, timeout=20,
             what="callee listening")
    assert uas.process.poll() is None, uas.report()
    phone.register(user, uas.port)
    uac = phone.caller("uac.xml", user, name=f"{name}-uac",
                       args=["-m", str(CALLS), "-r", "20", "-l", str(CALLS), "-d", str(hold_ms)])
    uac.start()
    return uac, uas


def test_kill_9_of_a_worker_loses_no_established_call(phone, cluster):
    """Issue 18.1: 40 calls established over two workers; one worker is
    killed; every BYE (sent 1-3 s later, before the dead worker's lease
    expires) is answered 200 by the callee through the surviving worker.
    Before: the edge answered the dead worker's BYEs 503 "worker link
    unavailable" until the lease expired."""
    uac, uas = held_calls(phone, "failbob", hold_ms=4000)
    wait_for(lambda: acks(uas) >= CALLS or uac.process.poll() is not None, timeout=60,
             what="all calls established")
    assert acks(uas) == CALLS, phone.report()
    victim, pid = sorted(cluster.worker_pids().items())[0]
    suspects_before = edge_status(cluster)["stats"].get("link_suspect", 0)
    os.kill(pid, signal.SIGKILL)
    phone.check(uac, uas)
    assert [line.split()[0] for line in received(uas)].count("BYE") == CALLS
    stats = edge_status(cluster)["stats"]
    # The edge saw the link drop (not only the lease expire) and sent the
    # dead worker's BYEs to the survivor.
    assert stats.get("link_suspect", 0) > suspects_before, stats
    assert not any("503" in line for line in received(uac)), received(uac)
    wait_for(lambda: cluster.worker_pids().get(victim) not in (None, pid), timeout=60,
             what="killed worker restarted")
    wait_for(lambda: len(cluster.worker_pids()) == 2, timeout=60, what="two workers again")


def probe(cluster: UpCluster, until, *, timeout: float = 90.0) -> Counter:
    """OPTIONS every few milliseconds from a thread, each with a new Call-ID
    (so every shard is asked and a short window is not missed), until
    ``until(seen)`` holds (checked every 0.2 s); ``seen`` counts the
    answers by status."""
    seen: Counter = Counter()
    done = threading.Event()
    tag = uuid.uuid4().hex[:8]

    def run() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.settimeout(0.003)
            host, port = sock.getsockname()
            n = 0
            while not done.is_set():
                n += 1
                sock.sendto((
                    f"OPTIONS sip:probe@127.0.0.1:{cluster.port} SIP/2.0\r\n"
                    f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{tag}{n};rport\r\n"
                    f"Max-Forwards: 70\r\nTo: <sip:probe@127.0.0.1>\r\n"
                    f"From: <sip:prober@127.0.0.1>;tag={tag}\r\nCall-ID: probe-{tag}-{n}\r\n"
                    f"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode(),
                    ("127.0.0.1", cluster.port))
                try:
                    while True:
                        answer = sock.recv(65536)
                        status = int(answer[8:11])
                        seen[status] += 1
                        if status != 200:  # why, for the assertion message
                            seen[answer.split(b"Warning: ", 1)[-1].split(b"\r\n", 1)[0].decode()] += 1
                except (TimeoutError, ConnectionError, ValueError):
                    pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: until(seen), timeout=timeout, interval=0.2, what="probe condition")
    finally:
        done.set()
        thread.join(5)
    return seen


def test_restarted_edge_opens_sip_only_once_it_has_a_ring(cluster):
    """Issue 18.6: a restarted edge answered 503 "no worker in the ring"
    for its first second. Now it reads its sockets once a worker is in its
    ring: requests meanwhile wait (or go unanswered) and are never 503."""
    edge = next(m for m in cluster.status()["members"] if m["role"] == "edge")
    os.kill(edge["pid"], signal.SIGKILL)

    def restarted(_) -> bool:
        return any(m["role"] == "edge" and m["pid"] != edge["pid"] and (m["status"] or {}).get("sip_open")
                   for m in members(cluster))

    seen = probe(cluster, restarted)
    # ... and its first answers once open are not 503 either.
    seen += probe(cluster, lambda more: more[200] >= 100)
    assert seen[503] == 0, seen


def test_etcd_stall_longer_than_the_lease_does_not_empty_the_ring(cluster, etcd_server):
    """Issue 18.6: after a 10 s SIGSTOP of etcd every lease expired together
    and the cluster answered 503 until the workers registered again. The
    edge holds the workers whose links are up."""
    assert etcd_server.pid is not None
    wait_for(lambda: len(cluster.worker_pids()) == 2, timeout=60, what="two workers")
    os.kill(etcd_server.pid, signal.SIGSTOP)
    try:
        stalled_until = time.monotonic() + 8  # > lease TTL (5 s) plus a keep-alive period
        seen = probe(cluster, lambda _: time.monotonic() > stalled_until)
    finally:
        os.kill(etcd_server.pid, signal.SIGCONT)

    def settled(_) -> bool:
        edge = edge_status(cluster)
        return len(edge.get("workers", ())) == 2 and not edge.get("held_workers") \
            and len(cluster.worker_pids()) == 2

    seen += probe(cluster, settled)
    assert seen[503] == 0, seen
    assert seen[200] >= 10, seen


def test_a_worker_resuming_from_a_stall_drops_what_queued_meanwhile(cluster):
    """Issue 18.6: a worker SIGSTOPped for longer than its lease answered
    the requests queued in its link when it resumed (SIPp aborted calls on
    those stray answers). Now what waited through the lease loss is dropped
    and counted (drop_stale); the callers' retransmissions went to the shard
    that took the Call-IDs over."""
    wait_for(lambda: len(cluster.worker_pids()) == 2, timeout=60, what="two workers")
    pids = cluster.worker_pids()
    victim, pid = sorted(pids.items())[0]
    ring = Ring(sorted(pids))
    owned = [c for c in (f"stall-{uuid.uuid4().hex}" for _ in range(200))
             if ring.owner(c.encode()) == victim][:20]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        host, port = sock.getsockname()
        os.kill(pid, signal.SIGSTOP)
        try:
            stopped = time.monotonic()
            # Sent once each, no retransmission: they queue in the stopped
            # worker's link until the edge notices its missing heartbeats.
            for n, call_id in enumerate(owned):
                sock.sendto((
                    f"OPTIONS sip:stall@127.0.0.1:{cluster.port} SIP/2.0\r\n"
                    f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bKstall{n}{call_id[-8:]};rport\r\n"
                    f"Max-Forwards: 70\r\nTo: <sip:stall@127.0.0.1>\r\n"
                    f"From: <sip:stall@127.0.0.1>;tag=s{n}\r\nCall-ID: {call_id}\r\n"
                    f"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode(), ("127.0.0.1", cluster.port))
            wait_for(lambda: victim in edge_status(cluster).get("suspect_workers", ()), timeout=30,
                     what="the edge routing around the stalled worker")
            # Stalled for longer than its lease (5 s) plus a keep-alive period.
            wait_for(lambda: time.monotonic() - stopped > 8, timeout=30, what="the stall")
        finally:
            os.kill(pid, signal.SIGCONT)

        def victim_stats() -> dict:
            node = next((m["status"] for m in members(cluster) if m["id"] == victim), None)
            return (node or {}).get("stats", {})

        # Back: registered again and its link up at the edge (its backlog
        # was read before, as soon as it ran).
        wait_for(lambda: len(cluster.worker_pids()) == 2
                 and victim in edge_status(cluster).get("workers", ())
                 and victim not in edge_status(cluster).get("suspect_workers", [victim]),
                 timeout=60, what="the worker back in the ring")
        sock.settimeout(0.5)
        late = []
        try:
            while True:
                late.append(sock.recv(65536))
        except TimeoutError:
            pass
    answered_by_victim = [a for a in late if f"X-Sipcluster-Shard: {victim}".lower().encode() in a.lower()]
    assert answered_by_victim == [], answered_by_victim[:2]
    wait_for(lambda: victim_stats().get("drop_stale", 0) >= 1, timeout=30,
             what="the resumed worker counting its stale backlog")


def test_status_shows_each_nodes_ring_epoch_and_last_heartbeat(cluster):
    """Issue 18.8: the operator sees, per node, the epoch of the ring it
    routes with and when etcd last confirmed its lease."""
    wait_for(lambda: len(cluster.worker_pids()) == 2, timeout=60, what="two workers")

    def all_reported() -> list[dict] | None:
        found = members(cluster)
        ok = len(found) == 3 and all(isinstance(m["ring_epoch"], int) and m["ring_epoch"] > 0
                                     and isinstance(m["last_heartbeat"], float) for m in found)
        return found if ok else None

    found = wait_for(all_reported, timeout=60, what="every node reporting epoch and heartbeat")
    for m in found:
        # Keep-alives go every lease TTL / 3 (5 s / 3).
        assert time.time() - m["last_heartbeat"] < 5 + 5, m
    text = cluster.cli("status")
    assert text.returncode == 0, text.stderr
    header, *rows = [line for line in text.stdout.splitlines()[1:] if line.strip()]
    assert header.split()[5:7] == ["EPOCH", "HEARTBEAT"], header
    assert all(re.search(r" \d+ +\d+\.\ds ", row) for row in rows), text.stdout


class EtcdRelay:
    """A TCP relay between one node and etcd, on loopback, that the test can
    pause: a paused relay stops moving bytes both ways, as a network cut
    would (connections stay open, nothing arrives)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.running = threading.Event()
        self.running.set()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        source.settimeout(0.2)
        while not self.closed:
            if not self.running.wait(0.2):
                continue
            try:
                data = source.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            try:
                sink.sendall(data)
            except OSError:
                break
        for sock in (source, sink):
            sock.close()

    def close(self) -> None:
        self.closed = True
        self.running.set()
        self.listener.close()


def test_a_worker_cut_from_etcd_stops_and_the_shard_that_took_over_answers(cluster, etcd_server, tmp_path):
    """Issue 18.7: a worker that reaches the edges but not etcd: once its
    lease may be gone it takes no new request (fenced), the shard that took
    its Call-IDs over answers them, and the two never both answer for
    longer than the lease TTL."""
    from cluster.config import load_config
    from tests.e2e.harness import ROOT
    import subprocess
    import sys

    wait_for(lambda: len(cluster.worker_pids()) == 2, timeout=60, what="two workers")
    host, port = etcd_server.endpoint.rsplit("//", 1)[1].rsplit(":", 1)
    relay = EtcdRelay((host, int(port)))
    config = load_config(None, env={}, overrides={
        "cluster.node_id": "cut-1", "cluster.etcd": [f"http://127.0.0.1:{relay.port}"],
        "cluster.prefix": "/sipcluster", "http.listen": "127.0.0.1:0"})
    path = tmp_path / "cut-1.toml"
    path.write_text(config.to_toml())
    log = open(tmp_path / "cut-1.log", "wb")
    worker = subprocess.Popen([sys.executable, "-m", "cluster.cli", "worker", "--config", str(path)],
                              stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=cluster.env)
    try:
        wait_for(lambda: "cut-1" in cluster.worker_pids(), timeout=60, what="cut-1 in the ring")
        ring = Ring(sorted(cluster.worker_pids()))
        owned = [c for c in (f"cut-{uuid.uuid4().hex}" for _ in range(300))
                 if ring.owner(c.encode()) == "cut-1"][:10]
        http = next(m["http"] for m in members(cluster) if m["id"] == "cut-1")
        answers: list[tuple[float, str]] = []
        done = threading.Event()

        def ask() -> None:
            n = 0
            while not done.is_set():
                n += 1
                status, headers = options(cluster.port, owned[n % len(owned)], timeout=0.5)
                if status == 200:
                    answers.append((time.monotonic(), headers.get("x-sipcluster-shard", "")))

        wait_for(lambda: options(cluster.port, owned[0])[1].get("x-sipcluster-shard") == "cut-1",
                 timeout=30, what="cut-1 answering its Call-IDs")
        thread = threading.Thread(target=ask, daemon=True)
        thread.start()
        try:
            relay.running.clear()
            cut = time.monotonic()
            # The shard that takes over answers once etcd drops cut-1 ...
            wait_for(lambda: any(t > cut and s != "cut-1" for t, s in answers), timeout=60,
                     what="another shard answering cut-1's Call-IDs")
            # ... and cut-1 knows its lease may be gone.
            wait_for(lambda: re.search(r"^sipcluster_worker_fenced(\{[^}]*\})? 1(\.0)?$", _metrics(http), re.M),
                     timeout=30, what="cut-1 fenced")
            seen = len(answers)
            wait_for(lambda: len(answers) >= seen + 20, timeout=30, what="more answers")
        finally:
            done.set()
            thread.join(5)
            relay.running.set()
        taken = min(t for t, s in answers if t > cut and s != "cut-1")
        last_cut = max((t for t, s in answers if s == "cut-1"), default=cut)
        # Never both for longer than the lease: cut-1 stopped before (or
        # about when) the other shard started; nothing from cut-1 after.
        assert last_cut - taken < 5, (last_cut - taken, answers[-40:])
        assert all(s != "cut-1" for t, s in answers if t > taken + 5), answers[-40:]
        # Reconnected to etcd, it registers again and serves.
        wait_for(lambda: "cut-1" in cluster.worker_pids(), timeout=60, what="cut-1 back")
    finally:
        worker.terminate()
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        log.close()
        relay.close()
    wait_for(lambda: "cut-1" not in cluster.worker_pids(), timeout=60, what="cut-1 gone")


def _metrics(http: str) -> str:
    import urllib.request
    try:
        with urllib.request.urlopen(f"{http}/metrics", timeout=2) as reply:
            return reply.read().decode()
    except OSError:
        return ""
