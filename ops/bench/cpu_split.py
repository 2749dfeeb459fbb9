#!/usr/bin/env python3
"""CPU per call of each process at fixed call rates, the cluster beside Kamailio TLSF.

    .venv/bin/python ops/bench/cpu_split.py                   # 100, 300, 1,000 calls/s, 10 s each
    .venv/bin/python ops/bench/cpu_split.py --rates 300 --seconds 20 --workers 2
    .venv/bin/python ops/bench/cpu_split.py --quick           # smoke test (tiny numbers)
    .venv/bin/python ops/bench/cpu_split.py --strace 300      # + syscalls per call (strace -c)

Issue 21 point 4: at a moderate fixed rate a process's cost is per wake-up,
not per message, so the figure that matters is CPU per call at the rates an
operator runs, not only at saturation. For each rate this starts SIPp's
caller (``ops/bench/scenarios/uac_call.xml``, callee by IP: INVITE, 100,
180, 200, ACK, BYE, 200) for a bounded number of calls and reads, from
/proc, each process's utime + stime and its threads' voluntary context
switches (the wake-ups, without perf) before and after the run. The cluster (``sipcluster up``, 1 edge + ``--workers``) and Kamailio
(``ops/bench/kamailio/proxy.cfg`` with TLSF, as ``compare.py`` runs it) are
measured in the same run at the same rates, so the ratio holds however
loaded the machine is. The system under test runs on core 0, SIPp and this
script on core 1 (unless ``--no-pin`` or one core). Loopback only; every
load is bounded in calls and time; everything started is stopped.

The ms-per-call figure of a process includes its idle cost over the run
(timers, heartbeats): at 100 calls/s that is part of what an operator pays.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare import (  # the benchmarks are one directory of scripts
    CALLER_DOMAIN, Cluster, Kamailio, Load, Trial, free_udp_port, log, machine_lines,
)
from procs import Reading, read_process, read_roles, role_of, split_cpu

RATES = (100, 300, 1000)
SIPP = ("sipp caller", "sipp callee")


# -- the figures ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Split:
    """One system at one rate: per role, CPU ms and wake-ups per completed call."""
    system: str
    rate: float
    calls: int
    seconds: float
    ms_per_call: dict[str, float]
    wakeups_per_call: dict[str, float]
    failed: int
    kernel_share: float = 0.0
    """The kernel's part (stime) of the system under test's CPU."""

    @property
    def proxy_ms(self) -> float:
        """The system under test's CPU per call: every role but the load generator."""
        return sum(v for k, v in self.ms_per_call.items() if k not in SIPP)


def split(system: str, rate: float, before: dict[str, Reading], after: dict[str, Reading],
          calls: int, seconds: float, failed: int = 0) -> Split:
    """Per-call figures from two readings by role."""
    return per_unit(system, rate, split_cpu(before, after), calls, seconds, max(calls, 1), failed)


def per_unit(system: str, rate: float, used: dict[str, Reading], calls: int, seconds: float, per: float,
             failed: int = 0) -> Split:
    """``used`` divided by ``per``: the completed calls, or the seconds of the idle row."""
    proxy = [r for n, r in used.items() if n not in SIPP]
    cpu = sum(r.cpu for r in proxy)
    return Split(system, rate, calls, seconds, {n: r.cpu * 1000 / per for n, r in used.items()},
                 {n: r.switches / per for n, r in used.items()}, failed,
                 sum(r.kernel for r in proxy) / cpu if cpu else 0.0)


def render(splits: Sequence[Split], reference: str = "Kamailio TLSF") -> str:
    """Markdown: one row per system and rate, a column per role (ms CPU per
    call, wake-ups per call in brackets), the system's total without SIPp and
    its ratio to the reference system at the same rate. Rate 0 is the idle
    row: its cells are per second instead of per call."""
    roles = sorted({r for s in splits for r in s.ms_per_call if r not in SIPP}) + \
        [r for r in SIPP if any(r in s.ms_per_call for s in splits)]
    ref = {s.rate: s.proxy_ms for s in splits if s.system == reference}
    lines = ["| system | calls/s | calls ok (failed) | " + " | ".join(roles)
             + " | total ms/call (without SIPp) | kernel share | ÷ " + reference + " |",
             "|---" * (len(roles) + 6) + "|"]
    for s in splits:
        cells = [f"{s.ms_per_call[r]:.3f} ({s.wakeups_per_call[r]:.1f})" if r in s.ms_per_call else "—"
                 for r in roles]
        ratio = f"{s.proxy_ms / ref[s.rate]:.1f}×" if ref.get(s.rate) else "—"
        rate, calls = (f"{s.rate:,.0f}", f"{s.calls:,} ({s.failed})") if s.rate else ("idle", "—")
        lines.append(f"| {s.system} | {rate} | {calls} | " + " | ".join(cells)
                     + f" | {s.proxy_ms:.3f} | {100 * s.kernel_share:.0f} % | {ratio} |")
    return "\n".join(lines)


# -- strace -c: syscalls per call -------------------------------------------------------------


def parse_strace_summary(text: str) -> tuple[int, dict[str, int]]:
    """The total and the per-syscall call counts of an ``strace -c`` summary."""
    counts: dict[str, int] = {}
    total = 0
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 5 or not parts[0].replace(".", "", 1).isdigit():
            continue
        # % time, seconds, usecs/call, calls, [errors,] syscall|total
        name, calls = parts[-1], parts[3]
        if not calls.isdigit():
            continue
        if name == "total":
            total = int(calls)
        else:
            counts[name] = int(calls)
    return total, counts


class Strace:
    """``strace -f -c -p`` on some processes while a run lasts (it slows them:
    the counts are the figure, not the CPU of that run)."""

    def __init__(self, pids: dict[str, list[int]], out: Path) -> None:
        """``pids``: the processes of each role (Kamailio's are many)."""
        self.out = out
        self.procs = {name: subprocess.Popen(
            ["strace", "-f", "-c", "-o", str(out / f"strace-{name}.txt"),
             *(arg for pid in group for arg in ("-p", str(pid)))],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for name, group in pids.items()}

    def stop(self) -> dict[str, tuple[int, dict[str, int]]]:
        results = {}
        for name, proc in self.procs.items():
            proc.send_signal(2)  # SIGINT: strace detaches and writes its summary
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            path = self.out / f"strace-{name}.txt"
            results[name] = parse_strace_summary(path.read_text() if path.exists() else "")
        return results


# -- the runs --------------------------------------------------------------------------------


def fixed_rate(load: Load, rate: float, seconds: float, pids, name: str) -> tuple[Trial, dict, dict]:
    """SIPp's caller at ``rate`` for ``rate × seconds`` calls (bounded in
    time too); returns the trial and the readings by role before and after,
    SIPp's caller and callee included."""
    calls = max(10, int(rate * seconds))
    bound = int(seconds * 2 + 20)
    argv, run = load._sipp("uac_call.xml", [
        "-r", str(rate), "-m", str(calls), "-l", str(max(calls, 100)), "-d", "0",
        "-recv_timeout", "4000", "-p", str(free_udp_port()), "-timeout", f"{bound}s",
        "-key", "domain", f"127.0.0.1:{load.uas_port}", "-key", "caller_domain", CALLER_DOMAIN,
        "-s", "service"], name, load.target)
    assert load.uas is not None, "start the callee first"
    callee = load.uas.pid

    def sample() -> dict[str, Reading]:
        readings = read_roles(pids())
        uas = read_process(callee)
        if uas is not None:
            readings["sipp callee"] = uas
        return readings

    before = sample()
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=open(run / "stdout.txt", "wb"), stderr=subprocess.STDOUT,
                            cwd=run, start_new_session=True)
    # The caller's own counters, read until it exits (os.wait4 would race Popen).
    last: list[Reading] = []

    def follow() -> None:
        while proc.poll() is None:
            reading = read_process(proc.pid)
            if reading is not None:
                last[:] = [reading]
            time.sleep(0.05)

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    try:
        proc.wait(bound + 30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    follower.join(5)
    after = sample()
    if last:
        after["sipp caller"] = last[0]
    trial = load._trial(run, rate, calls, 0.0, proc.returncode, 0)
    return trial, before, {**after, "_seconds": time.monotonic() - t0}


def measure(system, load: Load, rates: Sequence[float], seconds: float, strace_rate: float | None,
            splits: list[Split], syscalls: list[str], idle: float = 0.0) -> None:
    load.start_uas()
    try:
        load.run("uac_call.xml", "warm-up", 20, 20,
                 {"domain": f"127.0.0.1:{load.uas_port}", "caller_domain": CALLER_DOMAIN}, ["-s", "service"])
        if idle:
            # What the system costs with no calls at all: its fixed share of every figure.
            time.sleep(2.0)
            before, t0 = read_roles(system.pids()), time.monotonic()
            time.sleep(idle)
            elapsed = time.monotonic() - t0
            splits.append(per_unit(system.label, 0, split_cpu(before, read_roles(system.pids())), 0,
                                   elapsed, elapsed))
        for rate in rates:
            time.sleep(2.0)  # the previous run's retransmissions and timers die down
            trial, before, after = fixed_rate(load, rate, seconds, system.pids, f"fixed-{rate:.0f}")
            elapsed = after.pop("_seconds")
            s = split(system.label, rate, before, after, trial.ok, elapsed, trial.failed)
            splits.append(s)
            log(f"{system.label} {rate:.0f}/s: {trial.ok} ok, {trial.failed} failed; "
                f"{s.proxy_ms:.3f} ms CPU per call")
        if strace_rate:
            time.sleep(2.0)
            targets: dict[str, list[int]] = {}
            for pid in system.pids():
                name = role_of(pid) or "?"
                if name.startswith(("edge", "worker", "kamailio", "etcd")):
                    targets.setdefault(name, []).append(pid)
            tracer = Strace(targets, load.out)
            time.sleep(1.0)  # attached
            trial, _, _ = fixed_rate(load, strace_rate, seconds, system.pids, f"strace-{strace_rate:.0f}")
            for name, (total, counts) in sorted(tracer.stop().items()):
                top = sorted(counts.items(), key=lambda kv: -kv[1])[:6]
                per = max(trial.ok, 1)
                syscalls.append(f"{system.label} {name} at {strace_rate:.0f} calls/s: {total / per:.1f} syscalls "
                                f"per call ({', '.join(f'{n} {c / per:.1f}' for n, c in top)}); {trial.ok} calls")
    finally:
        load.stop_uas()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", type=float, nargs="+", default=list(RATES), help="calls/s (default 100 300 1000)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of load per rate (default 10)")
    parser.add_argument("--idle", type=float, default=5.0,
                        help="seconds with no calls first: the idle row, per second (default 5, 0: none)")
    parser.add_argument("--workers", type=int, default=2, help="cluster workers (default 2)")
    parser.add_argument("--only", choices=("cluster", "kamailio"), help="run one side only")
    parser.add_argument("--strace", type=float, default=None, metavar="RATE",
                        help="one more run at RATE under strace -f -c: syscalls per call per process")
    parser.add_argument("--quick", action="store_true", help="2 s at 50 calls/s: a smoke test")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument("--out", type=Path, default=None, help="artifact directory (default: a new one in /tmp)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rates, args.seconds, args.idle = [50.0], 2.0, 1.0
    if not 0 < args.seconds <= 120 or not 0 <= args.idle <= 120 or not all(0 < r <= 5000 for r in args.rates):
        parser.error("--seconds must be in (0, 120], --idle in [0, 120] and every rate in (0, 5000]")
    out = args.out or Path(tempfile.mkdtemp(prefix="sipcluster-cpusplit-"))
    out.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    sut_cores, load_cores = (None, None) if args.no_pin or cores < 2 else ("0", "1")
    if load_cores:
        os.sched_setaffinity(0, {1})
    splits: list[Split] = []
    syscalls: list[str] = []
    load_before = os.getloadavg()
    systems: list[Kamailio | Cluster] = []
    if args.only != "cluster":
        systems.append(Kamailio("tlsf", out / "kamailio-tlsf", sut_cores))
    if args.only != "kamailio":
        systems.append(Cluster(args.workers, out / f"cluster-{args.workers}w", sut_cores))
    for system in systems:
        log(f"== {system.label}")
        system.start()
        try:
            measure(system, Load(system.port, system.out / "sipp", load_cores), args.rates, args.seconds,
                    args.strace, splits, syscalls, args.idle)
        finally:
            system.stop()
    print(render(splits))
    print("\nCells: ms of CPU (utime + stime) per completed call, (voluntary context switches of all "
          "the process's threads per call: its wake-ups); on the idle row, per second. Total: every "
          "process but SIPp's.")
    if syscalls:
        print("\nSyscalls (strace -f -c, a separate run):\n" + "\n".join(f"- {line}" for line in syscalls))
    print("\n" + machine_lines(sut_cores, load_cores)[0])
    print(f"Load average before / after: {' '.join(f'{v:.2f}' for v in load_before)} / "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}; {args.seconds:.0f} s per rate. "
          f"Reproduce: `.venv/bin/python ops/bench/cpu_split.py {' '.join(argv or sys.argv[1:])}`.")
    print(f"Artifacts: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
