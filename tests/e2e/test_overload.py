"""Bad input and bounded memory end to end (issue 19 parts 3 and "Bad input"):
one ``sipcluster up`` (two workers, real etcd). Each attack comes from its
own loopback address (127.0.0.x) while a legitimate client (127.0.0.1,
exempt from rate bans) keeps being answered; afterwards the counters show
a counted drop for each and no node grew without bound.

Memory bound (documented in ops/guide/troubleshooting.md): 3,000 OPTIONS
with distinct 30 KB From values cost a worker at most
``WORKER_GROWTH`` while its transactions hold them (Timer J, 64·T1), and it
returns to within ``WORKER_SETTLED`` of its baseline once they end.
"""

from __future__ import annotations

import re
import socket
import time
import urllib.request
import uuid

import pytest

from .harness import UpCluster, options, wait_for

LEGIT = "127.0.0.1"
PORT_ROTATOR = "127.0.0.88"
JUMBO = "127.0.0.99"
SLOW = "127.0.0.77"
PER_SOURCE = 4
MESSAGE_TIMEOUT = 2.0
T1 = 0.1  # Timer J = 64·T1 = 6.4 s: the held transactions end within the test
MB = 1 << 20
WORKER_GROWTH = 150 * MB
WORKER_SETTLED = 48 * MB
EDGE_GROWTH = 60 * MB


@pytest.fixture(scope="module")
def cluster(etcd_server, tmp_path_factory):
    up = UpCluster(tmp_path_factory.mktemp("overload"), workers=2, etcd=etcd_server.endpoint, env={
        "SIPCLUSTER_EDGE_RATE_LIMIT": "50", "SIPCLUSTER_EDGE_RATE_BURST": "100",
        "SIPCLUSTER_EDGE_RATE_EXEMPT": f"{LEGIT}/32",
        "SIPCLUSTER_EDGE_MAX_CONNECTIONS_PER_SOURCE": str(PER_SOURCE),
        "SIPCLUSTER_EDGE_TCP_MESSAGE_TIMEOUT": str(MESSAGE_TIMEOUT),
        "SIPCLUSTER_WORKER_T1": str(T1), "SIPCLUSTER_WORKER_T2": "1.0",
    }).start()
    try:
        wait_for(lambda: options(up.port)[0] == 200, timeout=60, what="the cluster answers")
        yield up
    finally:
        up.stop()


def members(cluster: UpCluster, role: str) -> list[dict]:
    return [m for m in cluster.status()["members"] if m["role"] == role]


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def metric(cluster: UpCluster, role: str, name: str, **labels: str) -> float:
    """The sum of ``name`` over the nodes of ``role`` whose labels include ``labels``."""
    total = 0.0
    for member in members(cluster, role):
        text = urllib.request.urlopen(member["metrics"], timeout=10).read().decode()
        for match in re.finditer(rf"^{name}(?:\{{([^}}]*)\}})? (\S+)$", text, re.M):
            found = match.group(1) or ""
            if all(f'{k}="{v}"' in found for k, v in labels.items()):
                total += float(match.group(2))
    return total


def big_options(n: int, size: int, port: int) -> bytes:
    tag = uuid.uuid4().hex
    big = f"{tag}{n}".ljust(size, "x")
    return (f"OPTIONS sip:{tag}@127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {LEGIT}:9;branch=z9hG4bK{tag};rport\r\nMax-Forwards: 70\r\n"
            f"To: <sip:{tag}@127.0.0.1>\r\nFrom: \"{big[:size // 2]}\" <sip:{big[size // 2:]}@example.com>;tag={n}\r\n"
            f"Call-ID: {tag}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()


def test_distinct_large_header_values_leave_worker_memory_bounded(cluster):
    workers = {m["id"]: m["pid"] for m in members(cluster, "worker")}
    # Baseline after some ordinary traffic (tables warm, allocator settled).
    for _ in range(200):
        options(cluster.port)
    baseline = {wid: rss(pid) for wid, pid in workers.items()}
    peak = dict(baseline)
    answered = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LEGIT, 0))
        sock.settimeout(5.0)
        for n in range(3000):
            sock.sendto(big_options(n, 30_000, cluster.port), (LEGIT, cluster.port))
            try:
                # One at a time (answers are large): what is measured is
                # what the worker keeps, not a queue.
                sock.recv(65536)
                answered += 1
            except TimeoutError:
                pass
            if n % 250 == 0:
                for wid, pid in workers.items():
                    peak[wid] = max(peak[wid], rss(pid))
    assert answered >= 2900, answered
    for wid, pid in workers.items():
        peak[wid] = max(peak[wid], rss(pid))
        assert peak[wid] - baseline[wid] < WORKER_GROWTH, (wid, baseline[wid] // MB, peak[wid] // MB)
    # Timer J (64·T1) ends the transactions holding the requests; their
    # memory goes back (the memo tables never kept the values).
    for wid, pid in workers.items():
        wait_for(lambda pid=pid, wid=wid: rss(pid) - baseline[wid] < WORKER_SETTLED, timeout=180, interval=1,
                 what=f"worker {wid} back near its baseline of {baseline[wid] // MB} MB")
    assert options(cluster.port)[0] == 200


def test_a_flood_of_64kb_datagrams_is_dropped_and_counted(cluster):
    (edge,) = members(cluster, "edge")
    before_rss = rss(edge["pid"])
    before = metric(cluster, "edge", "sipcluster_drops_total")
    kernel = metric(cluster, "edge", "sipcluster_udp_kernel_drops_total")
    garbage = b"\x16\x03\x01" + bytes(range(256)) * 255  # 65,283 bytes, no request line
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((JUMBO, 0))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        for _ in range(3000):
            try:
                sock.sendto(garbage, (LEGIT, cluster.port))
                sent += 1
            except BlockingIOError:
                pass
    # Answered again within a moment (the edge drains its kernel queue first).
    wait_for(lambda: options(cluster.port, timeout=1)[0] == 200, timeout=10, what="the probe answered")
    # Each one is a counted drop: by the edge (garbage, shed) or, while it
    # was busy, by the kernel (its own counter).
    wait_for(lambda: metric(cluster, "edge", "sipcluster_drops_total") - before
             + metric(cluster, "edge", "sipcluster_udp_kernel_drops_total") - kernel >= 0.95 * sent,
             timeout=30, what="the jumbo datagrams counted as drops")
    assert rss(edge["pid"]) - before_rss < EDGE_GROWTH


def test_a_source_rotating_through_every_port_is_banned_once(cluster):
    before = metric(cluster, "edge", "sipcluster_edge_bans_total", reason="rate")
    request = (f"OPTIONS sip:x@127.0.0.1:{cluster.port} SIP/2.0\r\nVia: SIP/2.0/UDP {PORT_ROTATOR};branch=z9hG4bK1\r\n"
               f"To: <sip:x@127.0.0.1>\r\nFrom: <sip:r@{PORT_ROTATOR}>;tag=1\r\nCall-ID: rot\r\n"
               "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()
    used = 0
    for port in range(1, 65536):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                sock.bind((PORT_ROTATOR, port))
            except OSError:
                continue
            sock.sendto(request, (LEGIT, cluster.port))
            used += 1
        if port % 4096 == 0:
            time.sleep(0.05)  # let the edge read: what is measured is the ban, not kernel drops
    assert used > 60_000
    wait_for(lambda: metric(cluster, "edge", "sipcluster_edge_bans_total", reason="rate") - before == 1,
             timeout=30, what="one rate ban for the rotating source")
    assert metric(cluster, "edge", "sipcluster_edge_bans", ) >= 1
    assert options(cluster.port)[0] == 200


def test_slowloris_connections_are_capped_and_timed_out(cluster):
    before_slow = metric(cluster, "edge", "sipcluster_drops_total", reason="tcp_slow_message")
    before_cap = metric(cluster, "edge", "sipcluster_drops_total", reason="tcp_per_source")
    request = (f"OPTIONS sip:x@127.0.0.1:{cluster.port} SIP/2.0\r\n"
               f"Via: SIP/2.0/TCP {SLOW};branch=z9hG4bKslow\r\n").encode()
    sockets = []
    try:
        for _ in range(PER_SOURCE * 2):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((SLOW, 0))
            sock.connect((LEGIT, cluster.port))
            sock.settimeout(0.2)
            sockets.append(sock)
        # Those beyond the cap are closed at once.
        wait_for(lambda: metric(cluster, "edge", "sipcluster_drops_total", reason="tcp_per_source")
                 - before_cap >= PER_SOURCE, timeout=30, what="connections over the per-source cap refused")
        started = time.monotonic()
        open_ = list(sockets)
        for n in range(int(MESSAGE_TIMEOUT * 10)):  # one byte a second, for up to 5x the deadline
            for sock in list(open_):
                try:
                    sock.sendall(request[n:n + 1])
                    if sock.recv(1) == b"":
                        open_.remove(sock)
                except (TimeoutError, BlockingIOError):
                    pass
                except OSError:
                    open_.remove(sock)
            if not open_:
                break
            # Meanwhile a legitimate TCP client is served.
            assert options(cluster.port, transport="tcp", timeout=5)[0] == 200
            time.sleep(max(0.0, 1.0 - 0.2 * len(open_)))
        assert not open_, f"{len(open_)} trickling connections still open"
        assert time.monotonic() - started < MESSAGE_TIMEOUT * 5
        wait_for(lambda: metric(cluster, "edge", "sipcluster_drops_total", reason="tcp_slow_message")
                 - before_slow >= PER_SOURCE, timeout=30, what="trickled messages timed out")
    finally:
        for sock in sockets:
            sock.close()
    # Once they are gone the source may connect again.
    with socket.create_connection((LEGIT, cluster.port), timeout=5, source_address=(SLOW, 0)) as sock:
        sock.settimeout(5)
        sock.sendall(request + b"To: <sip:x@127.0.0.1>\r\nFrom: <sip:s@x>;tag=1\r\n"
                     b"Call-ID: slow-again\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
        assert sock.recv(65536).startswith(b"SIP/2.0 200")
