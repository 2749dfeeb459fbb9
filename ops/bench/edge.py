"""Edge and cluster throughput: what one edge forwards, OPTIONS/s answered.

    .venv/bin/python ops/bench/edge.py [--quick]

Prints a markdown table with:
- edge forwarding: ``Forwarder.ingress`` (Call-ID fast path, ring owner,
  envelope, ZeroMQ send) in one process on one core, with a thread draining
  the PULL side; messages/s;
- OPTIONS/s answered by ``sipcluster up`` with 1 edge + 1 worker and with
  1 edge + 2 workers: SIPp at stepped rates (bounded count and time,
  loopback only), the highest rate with < 0.1% failed transactions;
- round-trip latency p50/p99 (SIPp UAC → edge → worker → edge → UAC) at half
  of that rate, which bounds the added latency of the two link hops.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

SCENARIO = ROOT / "tests" / "e2e" / "scenarios" / "options_uac.xml"


def edge_forwarding_rate(messages: int, framed: bool = False, defences: bool = False,
                         user_agent: bool = False) -> float:
    """Messages/s through Forwarder.ingress. ``framed``: the workers read
    version-2 frames and ingress queues as a UDP drain does, one frame per
    worker every FRAME_EVERY datagrams; otherwise one version-1 envelope per
    message (a worker of an older version). ``defences``: with the edge's
    guard as a node builds it (User-Agent check, and rate limiting on at a
    rate the one source stays under). ``user_agent``: each datagram carries a
    User-Agent (not a scanner's), as most do, so the check reads its value."""
    import zmq

    from cluster.link import FrameQueue, Inbox, Outbox
    from cluster.sharding.ring import Ring
    from nodes.edge.forwarder import Forwarder
    from nodes.edge.udp import FRAME_EVERY
    from tests.sip.samples import OPTIONS

    ctx = zmq.Context()
    inboxes = [Inbox(ctx, "tcp://127.0.0.1:0", hwm=1_000_000) for _ in range(2)]
    outbox = Outbox(ctx, hwm=1_000_000)
    guard = None
    if defences:
        from collections import Counter

        from cluster.config import EdgeConfig
        from nodes.edge.defence import EdgeDefenceEvents, build_guard
        edge = EdgeConfig(rate_limit=1e9, rate_burst=10**9)
        guard = build_guard(edge, EdgeDefenceEvents("edge-bench", Counter(), edge.rate_limit, None))
    forwarder = Forwarder("edge-bench", outbox, max_message=65535, server="bench", guard=guard)
    links = {"w1": inboxes[0].endpoint, "w2": inboxes[1].endpoint}
    forwarder.update(Ring(["w1", "w2"]), links, set(links.values()) if framed else None)
    forwarder.advertise = {"UDP": "127.0.0.1:5060"}
    received = [0]
    stop = threading.Event()

    def drain() -> None:
        poller = zmq.Poller()
        for inbox in inboxes:
            poller.register(inbox.socket, zmq.POLLIN)
        while not stop.is_set():
            for sock, _ in poller.poll(100):
                while True:
                    try:
                        sock.recv(zmq.NOBLOCK)
                        received[0] += 1
                    except zmq.Again:
                        break

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not all(outbox.send(i.endpoint, b"warm") for i in inboxes) and time.monotonic() < deadline:
        time.sleep(0.01)
    sample = OPTIONS
    if user_agent:
        sample = OPTIONS.replace(b"\r\nCall-ID", b"\r\nUser-Agent: Linphone/5.2 (belle-sip/5.2)\r\nCall-ID", 1)
    datagrams = [sample.replace(b"a84b4c76e66710", b"%014x" % i) for i in range(1000)]
    ingress = forwarder.ingress
    source, local = ("192.0.2.1", 5060), ("127.0.0.1", 5060)
    frames = FrameQueue() if framed else None
    flush = forwarder.flush
    start = time.perf_counter()
    for i in range(messages):
        ingress(datagrams[i % 1000], "UDP", source, local, None, frames)
        if frames and i % FRAME_EVERY == FRAME_EVERY - 1:
            flush(frames)
    if frames:
        flush(frames)
    elapsed = time.perf_counter() - start
    stop.set()
    thread.join()
    for inbox in inboxes:
        inbox.close()
    outbox.close()
    ctx.term()
    return messages / elapsed


_SINK = """
import sys, zmq
ctx = zmq.Context()
socks = [ctx.socket(zmq.PULL) for _ in range(2)]
for sock in socks:
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.bind("tcp://127.0.0.1:*")
print(" ".join(s.getsockopt(zmq.LAST_ENDPOINT).decode() for s in socks), flush=True)
poller = zmq.Poller()
for sock in socks:
    poller.register(sock, zmq.POLLIN)
while True:
    for sock, _ in poller.poll(1000):
        while sock.poll(0):
            sock.recv()
"""
_SENDER = """
import socket, sys, time
port, count = int(sys.argv[1]), int(sys.argv[2])
sample = open(sys.argv[3], "rb").read()
datagrams = [sample.replace(b"a84b4c76e66710", b"%014x" % i) for i in range(1000)]
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.connect(("127.0.0.1", port))
for i in range(count):
    sock.send(datagrams[i % 1000])
    if i % 100 == 99:
        time.sleep(0.002)  # about 40,000/s: within the edge's pace, so nothing is lost
"""


def udp_drain_cpu(messages: int, compiled: bool) -> tuple[float, int, int]:
    """The edge's UDP listener over a real socket, live: a sender process
    sends OPTIONS datagrams over loopback (paced so the kernel drops
    none), the listener forwards them in frames to two workers' links (a
    sink process reads them). Returns the edge process's CPU (every
    thread: trio's, ZeroMQ's I/O thread) in µs per forwarded message, the
    messages forwarded, and how many of them the C drain routed itself."""
    import zmq

    import trio
    from cluster.link import Outbox
    from cluster.sharding.ring import Ring
    from nodes.edge.forwarder import Forwarder
    from nodes.edge.udp import UdpListener
    from tests.sip.samples import OPTIONS

    sink = subprocess.Popen([sys.executable, "-c", _SINK], stdout=subprocess.PIPE, text=True)
    try:
        assert sink.stdout is not None
        endpoints = sink.stdout.readline().split()
        ctx = zmq.Context()
        outbox = Outbox(ctx, hwm=1_000_000)
        forwarder = Forwarder("edge-bench", outbox, max_message=65535, server="bench")
        links = {"w1": endpoints[0], "w2": endpoints[1]}
        forwarder.update(Ring(["w1", "w2"]), links, set(links.values()))
        forwarder.advertise = {"UDP": "127.0.0.1:5060"}
        deadline = time.monotonic() + 10
        while not all(outbox.send(e, b"warm") for e in endpoints) and time.monotonic() < deadline:
            time.sleep(0.01)
        listener = UdpListener("127.0.0.1", 0, forwarder, compiled=compiled)
        assert (listener.compiled is not None) == compiled, "the compiled module is not built"
        with tempfile.NamedTemporaryFile() as sample:
            sample.write(OPTIONS)
            sample.flush()
            cpu: list[float] = []

            async def main() -> None:
                async with trio.open_nursery() as nursery:
                    await nursery.start(listener.run)
                    start = time.process_time()
                    sender = await trio.lowlevel.open_process(
                        [sys.executable, "-c", _SENDER, str(listener.local[1]), str(messages), sample.name])
                    # The forwarder's counter is polled (it has no event to
                    # wait on), for at most the sender's time plus 30 s.
                    for _ in range(int((messages / 10_000 + 30) / 0.05)):
                        if forwarder.stats["forwarded"] >= messages:
                            break
                        await trio.sleep(0.05)
                    cpu.append(time.process_time() - start)
                    await sender.wait()
                    nursery.cancel_scope.cancel()

            trio.run(main)
        forwarded = forwarder.stats["forwarded"]
        outbox.close()
        ctx.destroy(linger=0)
        return cpu[0] / max(forwarded, 1) * 1e6, forwarded, forwarder.stats["udp_compiled"]
    finally:
        sink.kill()
        sink.wait()


def sipp_run(port: int, rate: int, count: int, workdir: Path, rtt: bool = False) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    stat = workdir / f"stat-{rate}.csv"
    argv = ["sipp", f"127.0.0.1:{port}", "-sf", str(SCENARIO), "-i", "127.0.0.1", "-p", "0",
            "-r", str(rate), "-m", str(count), "-l", str(max(rate, 100)), "-nostdin",
            "-timeout", f"{max(10, count // max(rate, 1) * 3)}s", "-recv_timeout", "5000",
            "-trace_stat", "-stf", str(stat), "-fd", "1"]
    if rtt:
        argv += ["-trace_rtt", "-rtt_freq", "1"]
    started = time.monotonic()
    subprocess.run(argv, cwd=workdir, capture_output=True, timeout=count // max(rate, 1) * 4 + 60)
    elapsed = time.monotonic() - started
    rows = list(csv.reader(stat.open(), delimiter=";")) if stat.exists() else []
    rtts: list[float] = []
    result: dict[str, object] = {"ok": 0, "failed": count, "elapsed": elapsed, "rtt": rtts}
    if len(rows) >= 2:
        header, last = rows[0], rows[-1]
        get = lambda name: int(float(last[header.index(name)]))  # noqa: E731
        result["ok"], result["failed"] = get("SuccessfulCall(C)"), get("FailedCall(C)")
    if rtt:
        for path in workdir.glob("*_rtt.csv"):
            for row in list(csv.reader(path.open(), delimiter=";"))[1:]:
                try:
                    rtts.append(float(row[2]))
                except (IndexError, ValueError):
                    pass
            path.unlink()
    return result


def max_rate(port: int, rates: list[int], seconds: float, workdir: Path) -> tuple[int, dict]:
    best, best_result = 0, {}
    for rate in rates:
        count = int(rate * seconds)
        result = sipp_run(port, rate, count, workdir)
        failed = result["failed"] + max(0, count - result["ok"] - result["failed"])
        if failed > count * 0.001:
            break
        best, best_result = rate, result
    return best, best_result


def hop_buckets(cluster) -> dict[str, dict[float, float]]:
    """Cumulative bucket counts of every node's sipcluster_hop_latency_seconds
    histogram, summed per hop: edge_to_worker (link), worker (processing of
    one message), edge_worker_edge (edge to worker and back)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families
    buckets: dict[str, dict[float, float]] = {}
    for member in cluster.status()["members"]:
        if not member.get("http"):
            continue
        text = urllib.request.urlopen(member["http"] + "/metrics", timeout=5).read().decode()
        for family in text_string_to_metric_families(text):
            if family.name != "sipcluster_hop_latency_seconds":
                continue
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    hop, le = sample.labels["hop"], float(sample.labels["le"])
                    per_hop = buckets.setdefault(hop, {})
                    per_hop[le] = per_hop.get(le, 0.0) + sample.value
    return buckets


def hop_latencies(before: dict, after: dict) -> dict[str, tuple[float, float]]:
    """p50/p99 (ms, as histogram bucket bounds) of the samples taken between
    two scrapes."""
    out = {}
    for hop, cumulative in after.items():
        base = before.get(hop, {})
        delta = {le: count - base.get(le, 0.0) for le, count in cumulative.items()}
        if delta and delta[max(delta)]:
            out[hop] = (_bucket_quantile(delta, 0.5), _bucket_quantile(delta, 0.99))
    return out


def _bucket_quantile(cumulative: dict[float, float], q: float) -> float:
    """The first bucket bound (ms) whose cumulative count reaches ``q`` of the total."""
    bounds = sorted(cumulative)
    total = cumulative[bounds[-1]]
    for bound in bounds:
        if cumulative[bound] >= q * total:
            return bound * 1000
    return float("inf")


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short steps (smoke run)")
    parser.add_argument("--drain", action="store_true",
                        help="only the UDP listener's CPU per message, compiled and pure Python")
    args = parser.parse_args()
    if args.drain:
        print_drain(50_000 if args.quick else 200_000)
        return
    if not shutil.which("sipp"):
        sys.exit("SIPp is required (apt-get install sip-tester)")
    seconds = 2.0 if args.quick else 5.0
    rates = [500, 1000] if args.quick else [1000, 2000, 3000, 4000, 5000, 6000, 8000, 10000, 12000]
    forward = edge_forwarding_rate(50_000 if args.quick else 300_000)
    framed = edge_forwarding_rate(50_000 if args.quick else 300_000, framed=True)
    with_agent = edge_forwarding_rate(50_000 if args.quick else 300_000, framed=True, user_agent=True)
    defended = edge_forwarding_rate(50_000 if args.quick else 300_000, framed=True, defences=True,
                                    user_agent=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="sipcluster-bench-") as tmp:
        from tests.e2e.harness import UpCluster
        for workers in (1, 2):
            state = Path(tmp) / f"w{workers}"
            state.mkdir()
            cluster = UpCluster(state, workers=workers).start()
            try:
                time.sleep(1.0)  # let every worker join the ring before loading it
                best, _ = max_rate(cluster.port, rates, seconds, Path(tmp) / f"sipp{workers}")
                half = max(best // 2, 50)
                before = hop_buckets(cluster)
                lat = sipp_run(cluster.port, half, int(half * seconds), Path(tmp) / f"lat{workers}",
                               rtt=True)
                rows.append((workers, best, percentile(lat["rtt"], 50), percentile(lat["rtt"], 99),
                             hop_latencies(before, hop_buckets(cluster))))
            finally:
                cluster.stop()
    from nodes.edge.udp import FRAME_EVERY
    cpu = open("/proc/cpuinfo").read().split("model name")[1].split("\n")[0].strip(": \t")
    print(f"Edge and cluster, {os.cpu_count()} cores ({cpu}); SIPp on the same machine, no pinning")
    print()
    print("| measure | value | target | met |")
    print("|---|---:|---:|---|")
    print(f"| edge forwarding, one envelope per message (msgs/s) | {forward:,.0f} | 30,000 | "
          f"{'yes' if forward >= 30000 else 'NO'} |")
    print(f"| edge forwarding, frames of {FRAME_EVERY} (msgs/s) | {framed:,.0f} | 30,000 | "
          f"{'yes' if framed >= 30000 else 'NO'} |")
    for label, rate in (("with User-Agent", with_agent), ("with User-Agent, edge defences on", defended)):
        print(f"| edge forwarding, frames of {FRAME_EVERY}, {label} (msgs/s) | {rate:,.0f} | 30,000 | "
              f"{'yes' if rate >= 30000 else 'NO'} |")
    for workers, best, p50, p99, hops in rows:
        target = "8,000" if workers >= 1 else ""
        print(f"| OPTIONS/s answered, 1 edge + {workers} worker(s), < 0.1% failed | {best:,} | "
              f"{target} | {'yes' if best >= 8000 else 'NO'} |")
        print(f"| round trip p50 / p99 at {max(best // 2, 50):,}/s, 1 edge + {workers} worker(s) (ms) | "
              f"{p50:.2f} / {p99:.2f} | | |")
        for hop, (h50, h99) in sorted(hops.items()):
            print(f"| hop {hop} p50 / p99 at {max(best // 2, 50):,}/s (bucket bound, ms), "
                  f"1 edge + {workers} worker(s) | "
                  f"≤ {h50:g} / ≤ {h99:g} | | |")
    print()
    print("Round trips come from SIPp (1 ms resolution); per-hop figures from the nodes' "
          "sipcluster_hop_latency_seconds histograms, taken during the half-load run only.")
    print(f"Rates tried: {', '.join(map(str, rates))} per second, {seconds:.0f} s each; "
          "the highest with < 0.1% failed transactions is reported.")


def print_drain(messages: int) -> None:
    from cluster import speedups
    print("| UDP listener, live over loopback, 2 workers' links | CPU µs per forwarded message | "
          "forwarded | routed in C | target |")
    print("|---|---:|---:|---:|---:|")
    for compiled in ((True, False) if speedups.edge is not None else (False,)):
        us, forwarded, in_c = udp_drain_cpu(messages, compiled)
        name = "compiled (recvmmsg, C routing)" if compiled else "pure Python (reference)"
        print(f"| {name} | {us:.2f} | {forwarded:,} | {in_c:,} | 5 |")


if __name__ == "__main__":
    main()
