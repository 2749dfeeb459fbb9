#!/usr/bin/env python3
"""Flood benchmark (issue 19 part 4): legitimate calls through garbage and OPTIONS floods.

    .venv/bin/python ops/bench/flood.py            # full run, about 2 minutes
    .venv/bin/python ops/bench/flood.py --quick    # short phases, a smoke test

One ``sipcluster up`` (1 edge, 2 workers, its own etcd, ``edge.rate_limit``
on) and SIPp: a UAS, and a UAC placing calls (INVITE … BYE, callee by IP)
at 50 calls/s from 127.0.0.1 for the whole run. Phases: baseline, a
garbage flood, calm, an OPTIONS flood, calm. Each flood comes from its own
loopback sources (127.0.0.x, never the UAC's address), sent by several
processes (``Flood``), each blasting pre-built datagrams with non-blocking
``sendto`` paced to its share of ``--rate``; the rate they reached is
printed, not assumed.

Targets (PASS/FAIL in the table): ≥ 99 % of the calls placed during each
flood and the calm after it complete; every flooding source is banned within
2 s of the flood's start (``sipcluster bans list --json``: a ban's ``until``
less ``edge.rate_ban_time`` is when it was made); within 2 s of each
flood's end the calls completing per second are back to 90 % of the rate
placed (SIPp's per-second statistics, ``-trace_stat -fd 1``); the edge's
and each worker's resident memory (VmRSS) stays within a bound of its
baseline. Everything binds to loopback and is bounded in time; everything
started is stopped.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import re
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

CHUNK = 64
"""Datagrams a sender sends between two looks at the clock."""
CALL_RATE = 50
RECOVERED = 0.9
"""Share of the placed call rate that counts as "calls complete again"."""
RECOVERY_S = 2.0
BAN_S = 2.0
COMPLETE = 0.99
MIB = 1 << 20
EDGE_BOUND = 60 * MIB
WORKER_BOUND = 150 * MIB
"""Resident memory a node may grow above its baseline (tests/e2e/test_overload.py's bounds)."""
RATE_LIMIT, RATE_BURST, BAN_TIME = 500, 1000, 120
"""The cluster's edge.rate_limit/rate_burst/rate_ban_time: the UAC's 150
requests/s (INVITE, ACK, BYE) stay far below; a flooding source is over its
burst within a fraction of a second. The ban outlives the run."""


# -- the flood senders (also used by tests/e2e/test_flood_recovery.py) ----------------


def datagrams(kind: str, source: str, target: tuple[str, int], count: int = 64) -> list[bytes]:
    """``count`` distinct datagrams of ``kind`` ("garbage" or "options") from ``source``."""
    rng = random.Random(f"{kind}{source}")
    out = []
    for n in range(count):
        if kind == "garbage":
            # No request line and no Call-ID: what a scanner's junk or a
            # misdirected protocol sends; sizes of typical small datagrams.
            out.append(bytes(rng.getrandbits(8) for _ in range(rng.randrange(60, 400))))
            continue
        tag = f"{rng.getrandbits(64):016x}{n}"
        out.append((f"OPTIONS sip:{target[0]}:{target[1]} SIP/2.0\r\n"
                    f"Via: SIP/2.0/UDP {source}:5060;branch=z9hG4bK{tag};rport\r\n"
                    f"Max-Forwards: 70\r\nTo: <sip:{target[0]}:{target[1]}>\r\n"
                    f"From: <sip:flood@{source}>;tag={tag[:8]}\r\nCall-ID: flood-{tag}\r\n"
                    "CSeq: 1 OPTIONS\r\nUser-Agent: flood\r\nContent-Length: 0\r\n\r\n").encode())
    return out


def _blast(kind: str, sources: Sequence[str], target: tuple[str, int], rate: float, seconds: float,
           start_at: float, results) -> None:
    """One sender process: round-robin over one socket per source, paced to
    ``rate`` datagrams/s from wall-clock ``start_at`` for ``seconds``."""
    socks, payloads = [], []
    for source in sources:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        sock.bind((source, 0))
        sock.setblocking(False)
        socks.append(sock)
        payloads.append(datagrams(kind, source, target))
    sends = [(sock.sendto, data) for sock, pool in zip(socks, payloads) for data in pool]
    rng = random.Random(os.getpid())
    rng.shuffle(sends)
    sent = refused = 0
    while time.time() < start_at:
        time.sleep(min(0.01, max(0.0, start_at - time.time())))
    began = time.monotonic()
    began_wall = time.time()
    end = began + seconds
    i = 0
    n = len(sends)
    while True:
        now = time.monotonic()
        if now >= end:
            break
        ahead = (sent + refused) / rate - (now - began)
        if ahead > 0.001:
            time.sleep(ahead)
            continue
        for _ in range(CHUNK):
            send, data = sends[i]
            i = (i + 1) % n
            try:
                send(data, target)
                sent += 1
            except OSError:  # EAGAIN, ENOBUFS: the kernel refused it
                refused += 1
    elapsed = time.monotonic() - began
    for sock in socks:
        sock.close()
    results.put((list(sources), sent, refused, elapsed, began_wall, time.time()))


@dataclass(frozen=True, slots=True)
class FloodResult:
    kind: str
    sources: tuple[str, ...]
    sent: int
    refused: int
    started: float
    """Wall-clock time the first sender began."""
    ended: float
    """Wall-clock time the last sender stopped."""
    seconds: float

    @property
    def rate(self) -> float:
        """Datagrams per second the kernel took from the senders, all together."""
        return self.sent / self.seconds if self.seconds > 0 else 0.0


class Flood:
    """``processes`` sender processes sharing ``sources`` (127.0.0.x
    addresses), ``rate`` datagrams/s in all, for ``seconds``."""

    def __init__(self, kind: str, sources: Sequence[str], target: tuple[str, int], *, rate: float,
                 seconds: float, processes: int = 4) -> None:
        if kind not in ("garbage", "options"):
            raise ValueError(f"unknown flood kind {kind!r}")
        if not all(s.startswith("127.") for s in [target[0], *sources]):
            raise ValueError("floods stay on loopback")
        self.kind = kind
        self.sources = tuple(sources)
        self.target = target
        self.rate = rate
        self.seconds = seconds
        self.processes = max(1, min(processes, len(self.sources)))
        self._context = multiprocessing.get_context("spawn")
        self._results = self._context.Queue()
        self._procs: list = []
        self.started = 0.0

    def start(self, delay: float = 0.5) -> Flood:
        """Start the senders; they begin together ``delay`` seconds from now."""
        self.started = time.time() + delay
        share = self.rate / self.processes
        for p in range(self.processes):
            proc = self._context.Process(
                target=_blast, daemon=True,
                args=(self.kind, self.sources[p::self.processes], self.target, share, self.seconds,
                      self.started, self._results))
            proc.start()
            self._procs.append(proc)
        return self

    def wait(self) -> FloodResult:
        """Wait for every sender (bounded) and sum up what they sent."""
        rows = []
        deadline = time.monotonic() + self.seconds + 60
        for _ in self._procs:
            rows.append(self._results.get(timeout=max(1.0, deadline - time.monotonic())))
        for proc in self._procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
        sent = sum(r[1] for r in rows)
        refused = sum(r[2] for r in rows)
        seconds = max(r[3] for r in rows)
        began = min(r[4] for r in rows)
        ended = max(r[5] for r in rows)
        return FloodResult(self.kind, self.sources, sent, refused, began, ended, seconds)

    def stop(self) -> None:
        for proc in self._procs:
            if proc.is_alive():
                proc.kill()
                proc.join(5)


# -- measuring ---------------------------------------------------------------------------


def vm_rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class RssSampler(threading.Thread):
    """VmRSS of each named process every ``every`` seconds, with the wall time."""

    def __init__(self, pids: dict[str, int], every: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.every = every
        self.samples: list[tuple[float, dict[str, int]]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.every):
            self.samples.append((time.time(), {name: vm_rss(pid) for name, pid in self.pids.items()}))

    def between(self, name: str, start: float, end: float) -> list[int]:
        return [s[name] for t, s in self.samples if start <= t < end and s.get(name)]


@dataclass(frozen=True, slots=True)
class Second:
    """One row of SIPp's per-second statistics."""

    at: float
    created: int
    ok: int
    failed: int


def seconds_of(rows: list[dict[str, str]]) -> list[Second]:
    out = []
    for row in rows:
        try:
            at = float(row["CurrentTime"].split("\t")[-1])
            out.append(Second(at, int(row["OutgoingCall(P)"]), int(row["SuccessfulCall(P)"]),
                              int(row["FailedCall(P)"])))
        except (KeyError, ValueError):
            continue
    return out


def completion(rows: list[Second], start: float, end: float) -> tuple[int, int]:
    """(completed, failed) calls SIPp counted in the periods ending within [start, end)."""
    within = [r for r in rows if start <= r.at < end]
    return sum(r.ok for r in within), sum(r.failed for r in within)


def recovery(rows: list[Second], ended: float, rate: float) -> float | None:
    """Seconds from ``ended`` to the end of the first period after it in
    which calls completed at ``RECOVERED`` of ``rate`` (None: never)."""
    previous = None
    for row in rows:
        if row.at <= ended:
            previous = row.at
            continue
        period = row.at - previous if previous is not None else 1.0
        previous = row.at
        if row.ok >= RECOVERED * rate * min(period, 1.0):
            return row.at - ended
    return None


def kernel_drops() -> int:
    lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines() if line.startswith("Udp:")]
    return int(lines[1][lines[0].index("RcvbufErrors")])


def socket_drops(port: int) -> int:
    """Datagrams the kernel dropped for the UDP sockets bound to ``port`` (/proc/net/udp)."""
    want = f":{port:04X}"
    total = 0
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(want):
            total += int(fields[-1])
    return total


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# -- the run --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Phases:
    baseline: float
    flood: float
    calm: float
    last_calm: float


FULL = Phases(5, 20, 10, 10)
QUICK = Phases(2, 3, 4, 4)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "**FAIL**"


def run(phases: Phases, rate: float, out: Path, processes: int) -> tuple[str, bool]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import compare  # the cluster and SIPp harness of the comparison benchmark

    class FloodCluster(compare.Cluster):
        """The benchmark cluster with per-source rate bans on."""

        @property
        def env(self) -> dict:
            env = super().env
            env.update(SIPCLUSTER_EDGE_RATE_LIMIT=str(RATE_LIMIT), SIPCLUSTER_EDGE_RATE_BURST=str(RATE_BURST),
                       SIPCLUSTER_EDGE_RATE_BAN_TIME=str(BAN_TIME))
            return env

    load0 = load_average()
    sut = FloodCluster(2, out / "cluster", None)
    compare.log(f"starting the cluster (load average {load0})")
    sut.start()
    target = ("127.0.0.1", sut.port)
    load = compare.Load(sut.port, out / "sipp", None)
    members = sut.status().get("members", [])
    pids = {m["id"]: m["pid"] for m in members if m["role"] in ("edge", "worker")}
    sampler = RssSampler(pids)
    floods: list[tuple[FloodResult, dict[str, float | None]]] = []
    marks: dict[str, float] = {}
    drops0 = kernel_drops()
    edge_drops0 = socket_drops(sut.port)
    total = phases.baseline + 2 * phases.flood + phases.calm + phases.last_calm
    calls = int(CALL_RATE * (total + 30))  # slack for the senders' start; stopped after the last calm

    def schedule(proc, run_dir) -> None:
        sampler.start()
        time.sleep(phases.baseline)
        for kind, first, calm in (("garbage", 101, phases.calm), ("options", 111, phases.last_calm)):
            sources = [f"127.0.0.{first + i}" for i in range(8)]
            compare.log(f"{kind} flood: {rate:,.0f} datagrams/s from {len(sources)} sources for {phases.flood:g} s")
            flood = Flood(kind, sources, target, rate=rate, seconds=phases.flood, processes=processes).start()
            try:
                result = flood.wait()
            finally:
                flood.stop()
            marks[f"{kind}_end"] = result.ended
            compare.log(f"{kind} flood sent {result.sent:,} ({result.rate:,.0f}/s), refused {result.refused:,}")
            floods.append((result, ban_lags(sut, result)))
            time.sleep(max(0.0, result.ended + calm - time.time()))
        marks["end"] = time.time()
        # SIGUSR1: SIPp places no more calls, ends those under way and exits.
        compare.stop_process(proc, signal.SIGUSR1, wait=30)

    try:
        load.start_uas()
        load.run("uac_call.xml", "warm-up", 20, 20, {"domain": f"127.0.0.1:{load.uas_port}",
                                                     "caller_domain": compare.CALLER_DOMAIN}, ["-s", "service"])
        trial = load.run("uac_call.xml", "calls", CALL_RATE, calls,
                         {"domain": f"127.0.0.1:{load.uas_port}", "caller_domain": compare.CALLER_DOMAIN},
                         ["-s", "service"], sut=sut, during=schedule)
    finally:
        sampler.done.set()
        load.stop_uas()
        edge_drops = socket_drops(sut.port) - edge_drops0
        diagnostics = sut.diagnostics()
        sut.stop()
    rows = seconds_of(compare.read_stats(trial.dir / "stat.csv"))
    return render(phases, rate, floods, rows, sampler, trial, marks, load0, (kernel_drops() - drops0, edge_drops),
                  diagnostics, processes)


def ban_lags(sut, flood: FloodResult) -> dict[str, float | None]:
    """Seconds from the flood's start to each source's ban (None: not banned)."""
    import json
    import subprocess
    result = subprocess.run([str(sys.executable), "-m", "cluster.cli", "bans", "list", "--json", "--etcd", sut.etcd],
                            capture_output=True, text=True, env=sut.env, cwd=Path(__file__).resolve().parents[2],
                            timeout=60)
    listed = {b["subject"]: b for b in json.loads(result.stdout)} if result.returncode == 0 else {}
    lags: dict[str, float | None] = {}
    for source in flood.sources:
        ban = listed.get(source)
        lags[source] = None if ban is None or ban["reason"] != "rate" else \
            max(0.0, ban["until"] - BAN_TIME - flood.started)
    return lags


def render(phases: Phases, rate: float, floods, rows: list[Second], sampler: RssSampler, trial, marks,
           load0: str, drops: tuple[int, int], diagnostics: list[str], processes: int) -> tuple[str, bool]:
    lines = ["| Figure | Garbage flood | OPTIONS flood | Target |", "|---|---|---|---|"]
    ok = True
    cells: dict[str, list[str]] = {}
    verdicts: dict[str, list[bool]] = {}

    def add(name: str, value: str, passed: bool | None = None) -> None:
        cells.setdefault(name, []).append(value)
        if passed is not None:
            verdicts.setdefault(name, []).append(passed)

    for n, (flood, lags) in enumerate(floods):
        window_end = floods[n + 1][0].started if n + 1 < len(floods) else marks.get("end", time.time()) + 10
        add("Flood rate reached (datagrams/s, all senders)", f"{flood.rate:,.0f}", flood.rate >= rate * 0.98)
        add("Datagrams sent / refused by the sending kernel", f"{flood.sent:,} / {flood.refused:,}")
        done, failed = completion(rows, flood.started, window_end)
        share = done / (done + failed) if done + failed else 0.0
        add("Calls completed during the flood and the calm after it", f"{share:.2%} ({done:,} of {done + failed:,})",
            share >= COMPLETE and done > 0)
        during, _ = completion(rows, flood.started, flood.ended)
        add("Calls completed per second during the flood", f"{during / max(flood.seconds, 1e-9):.1f}")
        banned = [lag for lag in lags.values() if lag is not None]
        worst = max(banned) if len(banned) == len(lags) else None
        add("Sources banned / slowest ban after the flood's start (s)",
            f"{len(banned)} of {len(lags)} / {worst:.2f}" if worst is not None else f"{len(banned)} of {len(lags)}",
            worst is not None and worst <= BAN_S)
        back = recovery(rows, flood.ended, CALL_RATE)
        add("Calls complete again at 90 % of the rate, after the flood's end (s)",
            f"≤ {back:.2f}" if back is not None else "never", back is not None and back <= RECOVERY_S)
        for role, bound in (("edge", EDGE_BOUND), ("worker", WORKER_BOUND)):
            growth = []
            for name in sorted(sampler.pids):
                if not name.startswith(role):
                    continue
                base = sampler.between(name, 0, floods[0][0].started) or [0]
                peak = sampler.between(name, flood.started, window_end) or [0]
                growth.append((name, min(base) / MIB, max(peak) / MIB))
            worst_growth = max((p - b for _, b, p in growth), default=0.0)
            add(f"{role.capitalize()} RSS: baseline → peak (MiB)",
                ", ".join(f"{b:.0f} → {p:.0f}" for _, b, p in growth), worst_growth * MIB < bound)
    targets = {
        "Flood rate reached (datagrams/s, all senders)": f"≥ 98 % of {rate:,.0f}",
        "Calls completed during the flood and the calm after it": f"≥ {COMPLETE:.0%}",
        "Sources banned / slowest ban after the flood's start (s)": f"all, ≤ {BAN_S:g} s",
        "Calls complete again at 90 % of the rate, after the flood's end (s)": f"≤ {RECOVERY_S:g} s",
        "Edge RSS: baseline → peak (MiB)": f"growth < {EDGE_BOUND // MIB} MiB",
        "Worker RSS: baseline → peak (MiB)": f"growth < {WORKER_BOUND // MIB} MiB",
    }
    for name, values in cells.items():
        passes = verdicts.get(name)
        target = targets.get(name, "")
        if passes is not None:
            ok = ok and all(passes)
            target = f"{target}: {verdict(all(passes))}"
        lines.append(f"| {name} | " + " | ".join(values) + f" | {target} |")
    total_ok = sum(r.ok for r in rows)
    # SIPp is stopped after the last calm, before its -m: "calls created by" is not a finding here.
    reasons = re.sub(r";? ?calls created by [^;]*", "", trial.reasons).strip("; ")
    lines += ["", f"Calls: {trial.created:,} placed at {CALL_RATE}/s, {trial.ok:,} completed, {trial.failed:,} failed"
              + (f" ({reasons})" if reasons else "") + f"; per-second rows {len(rows)}, "
              f"completions in them {total_ok:,}.",
              f"Phases: baseline {phases.baseline:g} s, floods {phases.flood:g} s each, calm {phases.calm:g} s and "
              f"{phases.last_calm:g} s; 8 sources per flood (127.0.0.101-108 garbage, 127.0.0.111-118 OPTIONS) "
              f"from {processes} sender processes; cluster 1 edge + 2 workers, edge.rate_limit {RATE_LIMIT}/s, "
              f"burst {RATE_BURST}, ban {BAN_TIME} s; nothing pinned.",
              f"Kernel UDP receive-buffer drops during the run: {drops[0]:,} machine-wide, {drops[1]:,} at the "
              "edge's socket.",
              f"Machine: {os.cpu_count()} cores, load average at the start {load0}, at the end {load_average()}.",
              f"Overall: {verdict(ok)}."]
    if diagnostics:
        lines += ["", "Node diagnostics:"] + [f"- {line}" for line in diagnostics]
    return "\n".join(lines), ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short phases: a smoke test, not a measurement")
    parser.add_argument("--rate", type=float, default=50_000, help="flood datagrams/s, all senders (default 50,000)")
    parser.add_argument("--out", type=Path, default=None, help="keep artifacts here (default: a new temp dir)")
    args = parser.parse_args(argv)
    if args.rate <= 0:
        parser.error("--rate must be positive")
    out = args.out or Path(tempfile.mkdtemp(prefix="sipcluster-flood-"))
    out.mkdir(parents=True, exist_ok=True)
    table, ok = run(QUICK if args.quick else FULL, args.rate, out, processes=4)
    print(table)
    print(f"\nArtifacts: {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
