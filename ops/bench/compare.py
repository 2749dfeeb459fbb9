#!/usr/bin/env python3
"""sipcluster against Kamailio under SIPp, in one run: prints one markdown table.

    .venv/bin/python ops/bench/compare.py                 # full run (< 15 min)
    .venv/bin/python ops/bench/compare.py --quick         # smoke test (tiny numbers)
    .venv/bin/python ops/bench/compare.py --only cluster  # or --only kamailio

What it measures (issue 6), the same scenarios (ops/bench/scenarios/) for both:
maximum calls/s with < 0.1 % failed calls (INVITE/100/180/200/ACK/BYE, the
callee by IP and, for the cluster, as a registered user), registrations/s
(new bindings, no auth and digest), INVITE→200 latency p50/p99 at half of each
system's maximum, CPU seconds per 1,000 calls of the proxy processes and,
for the cluster, that CPU by process (edge µs per message, workers' and
etcd's µs per call; issue 21), memory
(PSS) per 10,000 registrations and per 10,000 established calls, and the
cluster with 1 edge + 1 worker against 1 edge + 2 workers.

Phases alternate: Kamailio (TLSF), cluster 1+1, Kamailio (default
allocator), cluster 1+2. The system under test runs on core 0 and SIPp (and
this script) on core 1, unless --no-pin or the machine has one core; the
scaling rows run unpinned. Every load is bounded in calls and time, on
loopback only; everything this script starts, it stops. Artifacts (SIPp
statistics and error logs, node logs) stay in --out.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from procs import call_figures, edge_messages, read_roles, role_of, split_cpu

ROOT = Path(__file__).resolve().parents[2]
BENCH = Path(__file__).resolve().parent
SCENARIOS = BENCH / "scenarios"
KAMAILIO_CFG = BENCH / "kamailio" / "proxy.cfg"
PYTHON = ROOT / ".venv" / "bin" / "python" if (ROOT / ".venv" / "bin" / "python").exists() else Path(sys.executable)
HZ = os.sysconf("SC_CLK_TCK")
PASSWORD = "secret"
CALLEE = "bob"  # the registered user of the location-service calls
REG_DOMAIN, OPEN_DOMAIN = "localhost", "open.localhost"
CALLER_DOMAIN = "bench.invalid"  # not local: calls are relayed, not challenged


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True, slots=True)
class Profile:
    trial_s: float        # seconds of load per search trial
    max_trials: int       # bound on trials per search
    precision: float      # stop when failing/passing rate <= this
    latency_s: float      # seconds of the half-max run
    probe_rate: int       # timed probe calls/s within it
    mem_regs: int         # registrations for the memory figure
    mem_calls_s: float    # seconds of ramp for the established-calls figure
    pool: int             # digest users provisioned in the cluster
    min_calls: int        # smallest SIPp -m


FULL = Profile(5.0, 8, 1.08, 10.0, 50, 10_000, 12.0, 20_000, 50)
QUICK = Profile(1.0, 2, 1.5, 2.0, 20, 200, 1.0, 300, 20)
# Search start, cap, and fixed memory-test rates per system (calls/s, regs/s).
START = {"kamailio": (2000, 3000), "cluster": (300, 500), "direct": (4000, 0)}
QUICK_START = {"kamailio": (100, 100), "cluster": (50, 50), "direct": (100, 0)}
CAP = (16_000, 25_000)
KAMAILIO_SHM_MB = 4096
SETTLE_BOUND_S = 45
QUIESCE_BOUND_S = 60
QUIESCE_LIVE = 500
MEM_RATES = {"kamailio": (1000, 2000), "cluster": (250, 1000)}


# -- processes: CPU and memory from /proc ---------------------------------------------


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / HZ


def pss_mib(pids: list[int]) -> float:
    """Proportional set size: shared pages (Kamailio's shm) counted once."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
        except OSError:
            continue
    return total / 1024


def pss_by_name(pids: list[int]) -> dict[str, float]:
    """PSS per process, named by role (etcd, edge-1, worker-2, kamailio)."""
    named: dict[str, float] = {}
    for pid in pids:
        name = role_of(pid)
        if name is None:
            continue
        named[name] = named.get(name, 0.0) + pss_mib([pid])
    return named


def udp_receive_drops() -> int:
    """Datagrams the kernel dropped for full receive buffers (machine-wide)."""
    lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines() if line.startswith("Udp:")]
    return int(lines[1][lines[0].index("RcvbufErrors")])


def machine_busy_seconds() -> float:
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(values) - values[3] - values[4]) / HZ  # all but idle and iowait


def own_cpu_seconds() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def set_affinity(pids: list[int], cores: set[int]) -> None:
    """Every thread of every process (affinity is per thread)."""
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task") if os.path.isdir(f"/proc/{pid}/task") else ():
            try:
                os.sched_setaffinity(int(tid), cores)
            except OSError:
                pass


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        return udp.getsockname()[1]


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, wait: float = 30.0) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def options_ok(port: int, timeout: float = 0.5) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(timeout)
        cid = os.urandom(8).hex()
        lport = sock.getsockname()[1]
        sock.sendto((f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{lport};"
                     f"branch=z9hG4bK{cid};rport\r\nMax-Forwards: 70\r\nTo: <sip:127.0.0.1:{port}>\r\n"
                     f"From: <sip:probe@{CALLER_DOMAIN}>;tag={cid[:6]}\r\nCall-ID: {cid}\r\n"
                     f"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode(), ("127.0.0.1", port))
        try:
            return sock.recv(65536).startswith(b"SIP/2.0 200")
        except OSError:
            return False


# -- systems under test ---------------------------------------------------------------


class Kamailio:
    kind = "kamailio"

    def __init__(self, allocator: str, out: Path, cores: str | None) -> None:
        self.allocator, self.out, self.cores = allocator, out, cores
        self.port = free_udp_port()
        self.label = f"Kamailio {'TLSF' if allocator == 'tlsf' else 'default alloc'}"
        self.proc: subprocess.Popen | None = None
        self.ctl = out / "ctl.sock"

    def shm(self) -> str:
        """Kamailio's own account of its shared memory (kamcmd core.shmmem)."""
        try:
            text = subprocess.run(["kamcmd", "-s", f"unix:{self.ctl}", "core.shmmem"], capture_output=True,
                                  text=True, timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired):
            return "shm: kamcmd failed"
        values = dict(re.findall(r"(\w+):\s*(-?\d+)", text))
        if "max_used" not in values:
            return "shm: unreadable"
        # "total" overflows a 32-bit int in the RPC answer past 2 GB; -m is the total.
        used = int(values["max_used"]) / 2**20
        near = " — near the limit: raise KAMAILIO_SHM_MB" if used > 0.8 * KAMAILIO_SHM_MB else ""
        return f"shared memory max used {used:.0f} of {KAMAILIO_SHM_MB} MiB{near}"

    def argv(self) -> list[str]:
        # -m 4096: see the shared-memory note in proxy.cfg (256 MB runs out near 1,800 calls/s).
        argv = ["kamailio", "-f", str(KAMAILIO_CFG), "-DD", "-E", "-m", str(KAMAILIO_SHM_MB), "-M", "32",
                "-n", "1", "-l", f"udp:127.0.0.1:{self.port}", "-A", f'CTL_SOCKET="unix:{self.ctl}"']
        if self.allocator == "tlsf":
            argv += ["-x", "tlsf", "-X", "tlsf"]
        return (["taskset", "-c", self.cores] if self.cores else []) + argv

    def start(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(self.argv(), stdout=open(self.out / "kamailio.log", "wb"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while not options_ok(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"kamailio did not start; see {self.out / 'kamailio.log'}")

    def pids(self) -> list[int]:
        assert self.proc is not None, "not started"
        return [self.proc.pid, *descendants(self.proc.pid)]

    def stop(self) -> None:
        if self.proc:
            stop_process(self.proc)

    def diagnostics(self) -> list[str]:
        text = (self.out / "kamailio.log").read_text(errors="replace").splitlines()
        return [line for line in text if "ERROR" in line or "CRITICAL" in line][:10]


class Cluster:
    kind = "cluster"

    def __init__(self, workers: int, out: Path, cores: str | None) -> None:
        self.workers, self.out, self.cores = workers, out, cores
        self.port = free_udp_port()
        self.label = f"Cluster 1e+{workers}w"
        self.proc: subprocess.Popen | None = None
        self.etcd = ""
        self.lines: list[str] = []

    @property
    def env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIPCLUSTER_")}
        env.update(PYTHONPATH=f"{ROOT}{os.pathsep}{SCENARIOS}", SIPCLUSTER_STATE_DIR=str(self.out),
                   # SIPp answers only MD5 and only the first challenge.
                   SIPCLUSTER_WORKER_DIGEST_ALGORITHMS="MD5")
        return env

    def start(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        argv = [str(PYTHON), "-m", "cluster.cli", "up", "--workers", str(self.workers), "--edges", "1",
                "--listen", f"127.0.0.1:{self.port}", "--domain", REG_DOMAIN, "--domain", OPEN_DOMAIN,
                "--app", "bench_app:application", "--state-dir", str(self.out / "up")]
        argv = (["taskset", "-c", self.cores] if self.cores else []) + argv
        proc = self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                            text=True, env=self.env, cwd=ROOT, start_new_session=True)
        ready = threading.Event()

        def read() -> None:
            assert proc.stdout is not None  # stdout=PIPE
            for line in proc.stdout:
                self.lines.append(line.rstrip())
                match = re.search(r"etcd (\S+?),", line)
                if match:
                    self.etcd = match.group(1)
                if "ready" in line:
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(120):
            self.stop()
            raise RuntimeError("cluster not ready:\n" + "\n".join(self.lines[-20:]))
        deadline = time.monotonic() + 60
        while len([m for m in self.status().get("members", []) if m["role"] == "worker"]) < self.workers:
            if time.monotonic() > deadline:
                raise RuntimeError(f"fewer than {self.workers} workers joined the ring")
            time.sleep(0.5)

    def status(self) -> dict:
        result = subprocess.run([str(PYTHON), "-m", "cluster.cli", "status", "--json", "--etcd", self.etcd],
                                capture_output=True, text=True, env=self.env, cwd=ROOT, timeout=60)
        return json.loads(result.stdout) if result.returncode == 0 else {}

    def client(self):
        sys.path.insert(0, str(ROOT))
        from cluster.coordination.connection import EtcdAccess
        return EtcdAccess((self.etcd,), timeout=30).connect()

    def provision(self, users: list[str]) -> None:
        """Digest users straight into etcd, in transactions of 100 puts."""
        from cluster.auth.users import make_user_record, user_key
        client = self.client()
        try:
            for i in range(0, len(users), 100):
                puts = [client.transactions.put(user_key("/sipcluster", f"{u}@{REG_DOMAIN}"),
                                                json.dumps(make_user_record(f"{u}@{REG_DOMAIN}", PASSWORD)))
                        for u in users[i:i + 100]]
                client.transaction(compare=[], success=puts, failure=[])
        finally:
            client.close()

    def bindings(self) -> int:
        """Binding keys under the location prefix in etcd (a count-only range read)."""
        client = self.client()
        try:
            return client.get_prefix_response("/sipcluster/location/", count_only=True).count
        except Exception:  # noqa: BLE001 - a diagnostic only; -1 says "unknown"
            return -1
        finally:
            client.close()

    def pids(self) -> list[int]:
        # edge + workers + etcd; the supervisor itself only waits.
        assert self.proc is not None, "not started"
        return descendants(self.proc.pid)

    def stop(self) -> None:
        if self.proc:
            stop_process(self.proc, wait=90)

    def diagnostics(self) -> list[str]:
        """Warnings and errors of the nodes, counted by message, and edge/worker counters."""
        counts: dict[str, int] = {}
        for path in sorted((self.out / "up").glob("*-*.log")):
            for line in path.read_text(errors="replace").splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if record.get("level") in ("warning", "error", "critical"):
                    msg = re.sub(r"\d+", "N", str(record.get("msg", "")))[:120]
                    key = f"{path.stem}: {record['level']}: {msg}"
                    counts[key] = counts.get(key, 0) + 1
        etcd_log = self.out / "up" / "etcd.log"
        for line in (etcd_log.read_text(errors="replace").splitlines() if etcd_log.exists() else ()):
            if ('"level":"warn"' in line or '"level":"error"' in line) and "simple token" not in line:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                named = re.search(r'key:\\?"([^"\\]*)', record.get("request", ""))
                what = f"etcd: {record.get('msg', '')}" + (f" ({named.group(1)[:40]})" if named else "")
                counts[what] = counts.get(what, 0) + 1
        lines = [f"{n}× {k}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1])][:12]
        for member in self.status().get("members", []):
            stats = (member.get("status") or {}).get("stats") or {}
            keep = {k: v for k, v in stats.items() if re.search(r"drop|fail|timeout|overflow|unroutable|503|error|retrans|shed", k)}
            if keep:
                lines.append(f"{member['id']} counters: {json.dumps(keep, sort_keys=True)}")
        return lines


# -- SIPp -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Trial:
    rate: float
    calls: int
    created: int
    ok: int
    failed: int
    retrans: int
    on_time: bool
    cpu: float
    reasons: str
    dir: Path

    @property
    def passed(self) -> bool:
        return (self.created >= self.calls and self.on_time
                and self.failed <= 0.001 * self.calls and self.ok + self.failed >= self.created)


def elapsed_s(text: str) -> float:
    parts = [float(p) for p in text.split(":")]
    return parts[0] * 3600 + parts[1] * 60 + parts[2] + (parts[3] / 1e6 if len(parts) > 3 else 0)


def read_stats(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    rows = list(csv.reader(path.read_text(errors="replace").splitlines(), delimiter=";"))
    return [dict(zip(rows[0], row)) for row in rows[1:] if len(row) >= len(rows[0]) - 1]


class Load:
    """SIPp processes for one system under test, on the load-generator cores."""

    def __init__(self, target_port: int | None, out: Path, cores: str | None) -> None:
        self.target, self.out, self.cores = target_port, out, cores
        self.count = 0
        self.uas_port = free_udp_port()
        self.uas: subprocess.Popen | None = None

    def _sipp(self, scenario: str, extra: Sequence[str], name: str, remote: int | None) -> tuple[list[str], Path]:
        self.count += 1
        run = self.out / f"{self.count:02d}-{name}"
        run.mkdir(parents=True, exist_ok=True)
        argv = (["taskset", "-c", self.cores] if self.cores else []) + ["sipp"]
        if remote:
            argv.append(f"127.0.0.1:{remote}")
        argv += ["-sf", str(SCENARIOS / scenario), "-i", "127.0.0.1", "-t", "u1", "-nostdin",
                 "-buff_size", "4194304", "-trace_stat", "-stf", str(run / "stat.csv"), "-fd", "1",
                 "-trace_err", "-error_file", str(run / "errors.log"), "-trace_error_codes", *extra]
        return argv, run

    def start_uas(self, port: int | None = None, recv_timeout_ms: int = 10_000, name: str = "uas",
                  bound_s: int = 1800) -> subprocess.Popen:
        argv, run = self._sipp("uas_call.xml", ["-p", str(port or self.uas_port), "-recv_timeout",
                                                str(recv_timeout_ms), "-timeout", f"{bound_s}s"], name, None)
        proc = subprocess.Popen(argv, stdout=open(run / "stdout.txt", "wb"), stderr=subprocess.STDOUT,
                                cwd=run, start_new_session=True)
        time.sleep(0.3)  # SIPp binds its socket before it reads the scenario's first recv
        if proc.poll() is not None:
            raise RuntimeError(f"SIPp UAS exited; see {run}")
        if port is None:
            self.uas = proc
        return proc

    def stop_uas(self, proc: subprocess.Popen | None = None) -> None:
        """SIGUSR1: SIPp stops taking calls, ends the ones it has and exits."""
        proc = proc or self.uas
        if proc is not None:
            stop_process(proc, signal.SIGUSR1, wait=5)

    def run(self, scenario: str, name: str, rate: float, calls: int, keys: dict[str, str],
            extra: Sequence[str] = (), sut=None, hold_ms: int = 0, during=None) -> Trial:
        args = ["-r", str(round(rate, 2)), "-m", str(calls), "-l", str(max(calls, 100)),
                "-d", str(hold_ms), "-recv_timeout", str(4000 + hold_ms), "-p", str(free_udp_port())]
        for key, value in keys.items():
            args += ["-key", key, value]
        bound = calls / rate * 2 + hold_ms / 1000 + 20
        args += ["-timeout", f"{int(bound)}s", *extra]
        argv, run = self._sipp(scenario, args, name, self.target)
        cpu0 = cpu_seconds(sut.pids()) if sut else 0.0
        drops0 = udp_receive_drops()
        proc = subprocess.Popen(argv, stdout=open(run / "stdout.txt", "wb"), stderr=subprocess.STDOUT,
                                cwd=run, start_new_session=True)
        if during:
            during(proc, run)
        try:
            proc.wait(bound + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        cpu = (cpu_seconds(sut.pids()) - cpu0) if sut else 0.0
        return self._trial(run, rate, calls, cpu, proc.returncode, udp_receive_drops() - drops0)

    def _trial(self, run: Path, rate: float, calls: int, cpu: float, rc: int, drops: int) -> Trial:
        rows = read_stats(run / "stat.csv")
        if not rows:
            return Trial(rate, calls, 0, 0, calls, 0, False, cpu, f"no SIPp statistics (exit {rc})", run)
        last = rows[-1]
        get = lambda row, k: int(float(row.get(k) or 0))  # noqa: E731
        created = get(last, "OutgoingCall(C)")
        done_at = next((elapsed_s(r["ElapsedTime(C)"]) for r in rows if get(r, "OutgoingCall(C)") >= calls), 1e9)
        on_time = done_at <= calls / rate * 1.15 + 1.5
        reasons = {k.split("(")[0][6:]: get(last, k) for k in last
                   if k.startswith("Failed") and k.endswith("(C)") and k != "FailedCall(C)" and get(last, k)}
        codes: dict[str, int] = {}
        for path in run.glob("*error_codes*"):
            for line in path.read_text(errors="replace").splitlines():  # time;elapsed;code,code,...
                for code in line.split(";", 2)[-1].split(","):
                    if code.strip().isdigit():
                        codes[code.strip()] = codes.get(code.strip(), 0) + 1
        text = ", ".join(f"{k} {v}" for k, v in reasons.items())
        if codes:
            text += "; unexpected responses " + ", ".join(f"{c}×{n}" for c, n in sorted(codes.items()))
        warnings: dict[str, int] = {}
        if (run / "errors.log").exists():
            with open(run / "errors.log", errors="replace") as errors:
                for warning in re.findall(r"\nWarning: ([^\r\n]*\")\r?\n", errors.read(4_000_000)):
                    warnings[warning] = warnings.get(warning, 0) + 1
        if warnings:
            text += "; Warning headers " + ", ".join(f"{w} ×{n}" for w, n in sorted(warnings.items(), key=lambda kv: -kv[1])[:3])
        if not on_time:
            text += f"; calls created by {done_at:.0f} s, not {calls / rate:.1f} s (load generator behind)"
        if drops:
            text += f"; {drops} UDP datagrams dropped by the kernel (full receive buffers, machine-wide)"
        return Trial(rate, calls, created, get(last, "SuccessfulCall(C)"), get(last, "FailedCall(C)"),
                     get(last, "Retransmissions(C)"), on_time, cpu, text.strip("; "), run)


# -- the INVITE→200 probe: exact timing where SIPp's clock ticks in 4 ms -----------------


class SetupProbe(threading.Thread):
    """Timed calls (INVITE, 200, ACK, BYE, 200) through the proxy to the UAS,
    at a fixed rate, sequentially; perf_counter around INVITE→200."""

    RR = re.compile(r"<([^>]+)>")

    def __init__(self, proxy_port: int, uas_port: int, rate: float, count: int) -> None:
        super().__init__(daemon=True)
        self.proxy, self.uas, self.rate, self.count = ("127.0.0.1", proxy_port), uas_port, rate, count
        self.samples: list[float] = []
        self.failures = 0

    def run(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            start = time.monotonic()
            for i in range(self.count):
                delay = start + i / self.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                try:
                    self._call(sock, f"probe-{os.getpid()}-{start:.0f}-{i}")
                except OSError:
                    self.failures += 1

    def _request(self, method: str, ruri: str, cid: str, cseq: int, port: int, to: str,
                 routes: Sequence[str] = (), body: str = "") -> bytes:
        lines = [f"{method} {ruri} SIP/2.0",
                 f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{os.urandom(6).hex()};rport",
                 *(f"Route: <{r}>" for r in routes), "Max-Forwards: 70",
                 f"From: <sip:probe@{CALLER_DOMAIN}>;tag={cid[-12:]}", f"To: {to}", f"Call-ID: {cid}",
                 f"CSeq: {cseq} {method}", f"Contact: <sip:probe@127.0.0.1:{port}>"]
        if body:
            lines.append("Content-Type: application/sdp")
        return ("\r\n".join(lines) + f"\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode()

    def _await(self, sock, cid: str, method: str, first: bytes, deadline: float) -> dict | None:
        """Retransmit per RFC 3261 §17.1.1.2 / §17.1.2.2 until a final response."""
        retransmit, interval = time.monotonic() + 0.5, 0.5
        while (now := time.monotonic()) < deadline:
            sock.settimeout(max(0.001, min(deadline, retransmit) - now))
            try:
                data = sock.recv(65536)
            except TimeoutError:
                if time.monotonic() >= retransmit:
                    sock.sendto(first, self.proxy)
                    interval *= 2
                    retransmit = time.monotonic() + interval
                continue
            head = data.split(b"\r\n\r\n", 1)[0].decode(errors="replace").split("\r\n")
            headers: dict[str, list[str]] = {}
            for line in head[1:]:
                name, _, value = line.partition(":")
                headers.setdefault(name.strip().lower(), []).append(value.strip())
            if (headers.get("call-id") or headers.get("i") or [""])[0] != cid:
                continue
            if not head[0].startswith("SIP/2.0 ") or method not in (headers.get("cseq") or [""])[0]:
                continue
            status = int(head[0][8:11])
            if status >= 200:
                return {"status": status, **headers}
        return None

    def _call(self, sock, cid: str) -> None:
        port = sock.getsockname()[1]
        to = f"<sip:service@127.0.0.1:{self.uas}>"
        sdp = "v=0\r\no=probe 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\n"
        invite = self._request("INVITE", f"sip:service@127.0.0.1:{self.uas}", cid, 1, port, to, body=sdp)
        t0 = time.perf_counter()
        sock.sendto(invite, self.proxy)
        final = self._await(sock, cid, "INVITE", invite, time.monotonic() + 4)
        if final is None or final["status"] != 200:
            self.failures += 1
            return
        self.samples.append((time.perf_counter() - t0) * 1000)
        to_values = final.get("to") or final.get("t")
        contacts = final.get("contact") or final.get("m")
        target = self.RR.search(contacts[0]) if contacts else None
        if not to_values or target is None:
            self.failures += 1  # a 200 without To or Contact: no dialog to use
            return
        to, contact = to_values[0], target.group(1)
        routes = [u for v in final.get("record-route", []) for u in self.RR.findall(v)][::-1]  # §12.1.2
        sock.sendto(self._request("ACK", contact, cid, 1, port, to, routes), self.proxy)
        bye = self._request("BYE", contact, cid, 2, port, to, routes)
        sock.sendto(bye, self.proxy)
        if self._await(sock, cid, "BYE", bye, time.monotonic() + 4) is None:
            self.failures += 1


def breakdown(before: dict[str, float], after: dict[str, float]) -> str:
    return ", ".join(f"{name} {after.get(name, 0) - before.get(name, 0):+.1f}" for name in sorted(after))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


# -- the measurements ---------------------------------------------------------------------


@dataclass
class Bench:
    profile: Profile
    out: Path
    sut_cores: str | None
    load_cores: str | None
    all_cores: str
    quick: bool
    results: dict[tuple[str, str], float] = field(default_factory=dict)
    trails: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    pool_csv: Path | None = None
    capped: set = field(default_factory=set)
    stored: list[str] = field(default_factory=list)
    settled: dict[str, list[float]] = field(default_factory=dict)

    def start_rate(self, kind: str, which: int) -> float:
        return (QUICK_START if self.quick else START)[kind][which]

    def settle(self, sut, label: str) -> None:
        """Before a trial: the system under test idle (< 0.25 core over 0.5 s) and
        answering OPTIONS, so one trial's backlog does not fail the next. Bounded."""
        start = time.monotonic()
        while True:
            pids = sut.pids()
            c0, t0 = cpu_seconds(pids), time.monotonic()
            time.sleep(0.5)
            busy = (cpu_seconds(pids) - c0) / (time.monotonic() - t0)
            if busy < 0.25 and options_ok(sut.port, timeout=1.0):
                self.settled.setdefault(label, []).append(time.monotonic() - start)
                return
            if time.monotonic() - start > SETTLE_BOUND_S:
                self.notes.append(f"{label}: not settled after {SETTLE_BOUND_S} s (busy {busy:.2f} core, "
                                  f"OPTIONS {'ok' if options_ok(sut.port) else 'unanswered'}); trial run anyway")
                log(f"{label}: not settled after {SETTLE_BOUND_S} s")
                return

    def search(self, label: str, figure: str, trial, start: float, cap: float, sut=None) -> float:
        """Double until a trial fails, then bisect; every trial bounded, at most max_trials.
        Returns the highest passing rate; a search that passed at the cap is recorded in capped."""
        lo, hi, rate, trials = 0.0, None, float(start), []
        for _ in range(self.profile.max_trials):
            if sut is not None:
                self.settle(sut, label)
            t = trial(rate)
            trials.append(t)
            log(f"{label} {figure}: {rate:.0f}/s -> {'pass' if t.passed else 'FAIL'} "
                f"({t.ok} ok, {t.failed} failed, {t.retrans} retrans{'; ' + t.reasons if t.reasons else ''})")
            if t.passed:
                lo = rate
            else:
                hi = rate if hi is None else min(hi, rate)
            if hi is None:
                if rate >= cap:
                    break
                rate = min(rate * 2, cap)
            elif lo == 0:
                rate = hi / 2
            elif hi / lo <= self.profile.precision:
                break
            else:
                rate = (lo + hi) / 2
            rate = float(max(1, round(rate)))
        if hi is None and lo >= cap:
            self.capped.add((label, figure))
        self.trails.append(f"{label}, {figure}: " + " → ".join(
            f"{t.rate:.0f} {'✓' if t.passed else '✗'}{f' ({t.retrans} retrans)' if t.retrans else ''}"
            for t in trials))
        failing = [t for t in trials if not t.passed and t.rate > lo]
        if failing:
            t = min(failing, key=lambda t: t.rate)
            table = []
            stdout = (t.dir / "stdout.txt").read_text(errors="replace") if (t.dir / "stdout.txt").exists() else ""
            chunk = stdout.rsplit("Messages  Retrans", 1)
            if len(chunk) == 2:
                table = [" ".join(line.split()) for line in chunk[1].splitlines()[1:12]
                         if "---" in line or "<" in line or "Pause" in line][:10]
            self.failures.append(f"{label}, {figure}, first failing rate {t.rate:.0f}/s: {t.created} calls, "
                                 f"{t.failed} failed, {t.retrans} retransmissions; {t.reasons or 'no reason'} "
                                 f"[{t.dir.name}]" + "".join(f"\n    {line}" for line in table))
        return lo

    def calls(self, load: Load, sut, label: str, domain: str, service: str = "service"):
        def trial(rate: float) -> Trial:
            n = max(self.profile.min_calls, int(rate * self.profile.trial_s))
            return load.run("uac_call.xml", f"calls-{rate:.0f}", rate, n,
                            {"domain": domain, "caller_domain": CALLER_DOMAIN}, ["-s", service], sut=sut)
        return trial

    def registrations(self, load: Load, sut, auth: bool):
        def trial(rate: float) -> Trial:
            n = max(self.profile.min_calls, int(rate * self.profile.trial_s))
            keys = {"domain": REG_DOMAIN if auth else OPEN_DOMAIN, "run": f"r{load.count + 1}",
                    "contact_host": "127.0.0.1", "contact_port": "5999"}
            before = sut.bindings() if isinstance(sut, Cluster) else None
            t = load.run("register_auth.xml" if auth else "register.xml",
                         f"regs{'-auth' if auth else ''}-{rate:.0f}", rate, n, keys,
                         ["-inf", str(self.pool_csv)] if auth else [], sut=sut)
            if before is not None and before >= 0:
                stored = sut.bindings() - before
                self.stored.append(f"{sut.label} {'digest ' if auth else ''}{rate:.0f}/s: {t.ok} × 200 OK, "
                                   f"{stored} new binding keys in etcd")
                if stored < t.ok:
                    return replace(t, failed=t.failed + t.ok - stored, reasons=(
                        t.reasons + f"; only {stored} of {t.ok} acknowledged bindings in etcd").strip("; "))
            return t
        return trial

    def pool(self, size: int) -> list[str]:
        users = [f"a{i:06d}" for i in range(1, size + 1)]
        if self.pool_csv is None:
            self.pool_csv = self.out / "users.csv"
            self.pool_csv.write_text("SEQUENTIAL\n" + "".join(f"{u};{PASSWORD};\n" for u in users))
        return users

    def memory(self, sut, load: Load, label: str) -> None:
        """PSS deltas on a fresh system, before any search has grown (and freed) its heaps."""
        call_rate, reg_rate = MEM_RATES[sut.kind]
        if self.quick:
            call_rate, reg_rate = 100, 200
        n = self.profile.mem_regs
        parts0 = pss_by_name(sut.pids())
        t = load.run("register.xml", "mem-regs", reg_rate, n, {"domain": OPEN_DOMAIN, "run": "mem",
                     "contact_host": "127.0.0.1", "contact_port": "5999"}, sut=sut)
        time.sleep(1.0)  # group commits and watch fan-out settle
        parts1 = pss_by_name(sut.pids())
        before, after = sum(parts0.values()), sum(parts1.values())
        if t.ok:
            self.results[(label, "mem_reg")] = (after - before) / t.ok * 10_000
        self.notes.append(f"{label}: memory per registration from {t.ok} new bindings at {reg_rate}/s "
                          f"({before:.1f} → {after:.1f} MiB PSS; {breakdown(parts0, parts1)})")
        n = max(self.profile.min_calls, int(call_rate * self.profile.mem_calls_s))
        hold_ms = int((n / call_rate + 4) * 1000)
        port = free_udp_port()
        uas = load.start_uas(port, recv_timeout_ms=hold_ms + 30_000, name="uas-hold")
        sample: dict = {}

        def during(proc: subprocess.Popen, run: Path) -> None:
            ready_at = time.monotonic() + n / call_rate + 1.5
            while time.monotonic() < ready_at and proc.poll() is None:
                time.sleep(0.05)
            sample["parts"] = pss_by_name(sut.pids())
            sample["pss"] = sum(sample["parts"].values())
            rows = read_stats(run / "stat.csv")
            sample["up"] = float(rows[-1].get("CurrentCall") or 0) if rows else 0.0

        parts0 = pss_by_name(sut.pids())
        base = sum(parts0.values())
        t = load.run("uac_call.xml", "mem-calls", call_rate, n,
                     {"domain": f"127.0.0.1:{port}", "caller_domain": CALLER_DOMAIN}, ["-s", "service"],
                     hold_ms=hold_ms, during=during)
        load.stop_uas(uas)
        established = min(sample.get("up", 0), n - t.failed)
        if established > 0:
            self.results[(label, "mem_call")] = (sample["pss"] - base) / established * 10_000
        self.notes.append(f"{label}: memory per call from {established:.0f} calls established at once "
                          f"({call_rate}/s, held {hold_ms / 1000:.0f} s; {base:.1f} → {sample.get('pss', 0):.1f} MiB; "
                          f"{breakdown(parts0, sample.get('parts', {}))})")

    def quiesce(self, sut, label: str) -> None:
        """Before the half-load run: the previous trials' transactions gone.
        A cluster worker keeps each transaction until its Timer J/L/M (32 s,
        RFC 6026); after a search that ended near twice the maximum, tens of
        thousands are still being reaped, and the latency figure would
        measure that recovery instead of half load. Kamailio's tm frees its
        transactions 5 s after the final reply (wt_timer), which ``settle``
        already covers. Bounded; the wait is in the notes."""
        if not isinstance(sut, Cluster):
            return
        start = time.monotonic()
        live = None
        while time.monotonic() - start < QUIESCE_BOUND_S:
            live = 0
            for member in sut.status().get("members", []):
                if member.get("role") == "worker" and member.get("http"):
                    try:
                        with urllib.request.urlopen(member["http"].rstrip("/") + "/status", timeout=5) as reply:
                            live += int(json.loads(reply.read()).get("transactions", 0))
                    except (OSError, ValueError):
                        live = None
                        break
            if live is not None and live <= QUIESCE_LIVE:
                break
            time.sleep(1.0)
        self.notes.append(f"{label}: before the half-max run, waited {time.monotonic() - start:.0f} s "
                          f"for the workers' live transactions to fall to {live} (≤ {QUIESCE_LIVE})")

    def edge_counters(self, sut) -> dict[str, int] | None:
        """The edges' event counters summed (None for Kamailio, or unreadable)."""
        if not isinstance(sut, Cluster):
            return None
        edges: list[dict | None] = [(m.get("status") or {}).get("stats") for m in sut.status().get("members", [])
                                    if m.get("role") == "edge"]
        if not edges or None in edges:
            return None
        total: dict[str, int] = {}
        for stats in edges:
            for key, value in (stats or {}).items():
                total[key] = total.get(key, 0) + int(value)
        return total

    def latency_cpu(self, sut, load: Load, label: str, max_rate: float) -> None:
        """Half of the maximum: SIPp at half minus the probe rate, plus the timed probe."""
        self.quiesce(sut, label)
        self.settle(sut, label)
        rate = max(max_rate / 2, 10.0)
        probe_rate = min(self.profile.probe_rate, rate / 4)
        sipp_rate = rate - probe_rate
        n = max(self.profile.min_calls, int(sipp_rate * self.profile.latency_s))
        probe = SetupProbe(sut.port, load.uas_port, probe_rate, int(probe_rate * n / sipp_rate * 0.9))
        pids = sut.pids()
        roles0, edges0 = read_roles(pids), self.edge_counters(sut)
        t = load.run("uac_call.xml", f"latency-{rate:.0f}", sipp_rate, n,
                     {"domain": f"127.0.0.1:{load.uas_port}", "caller_domain": CALLER_DOMAIN}, ["-s", "service"],
                     during=lambda proc, run: probe.start())
        probe.join(60)
        used = split_cpu(roles0, read_roles(pids))
        edges1 = self.edge_counters(sut)
        cpu = sum(r.cpu for r in used.values())
        calls = t.ok + len(probe.samples)
        if probe.samples:
            self.results[(label, "p50")] = percentile(probe.samples, 0.50)
            self.results[(label, "p99")] = percentile(probe.samples, 0.99)
        messages = edge_messages(edges0, edges1) if edges0 is not None and edges1 is not None else None
        for key, value in call_figures(used, calls, messages).items():
            self.results[(label, key)] = value
        if calls:
            self.notes.append(f"{label}: CPU per call at half max by process: " + ", ".join(
                f"{name} {r.cpu * 1000 / calls:.3f} ms ({r.switches / calls:.1f} wake-ups)"
                for name, r in used.items()) + (f"; the edge handled {messages / calls:.1f} messages per call"
                                                 if messages else ""))
        rows = read_stats(t.dir / "stat.csv")
        under = ""
        if rows:
            buckets = {k: int(float(v or 0)) for k, v in rows[-1].items() if k.startswith("ResponseTimeRepartition")}
            total = sum(buckets.values())
            fast = sum(v for k, v in buckets.items() if k.rsplit("_", 1)[-1] in ("<1", "<2", "<5", "<10", "<20"))
            under = f"; SIPp's own RTD (4 ms clock): {100 * fast / total:.2f} % of {total} set-ups under 20 ms" if total else ""
        self.notes.append(f"{label}: half max {rate:.0f} calls/s for {self.profile.latency_s:.0f} s: "
                          f"{len(probe.samples)} timed probe calls ({probe.failures} failed), SIPp {t.ok} ok / "
                          f"{t.failed} failed, {cpu:.2f} CPU s{under}")
        if t.failed or probe.failures:
            self.failures.append(f"{label}, half-max run at {rate:.0f}/s: {t.failed} SIPp calls and "
                                 f"{probe.failures} probe calls failed; {t.reasons} [{t.dir.name}]")

    # -- phases ------------------------------------------------------------------------

    FIGURES = {"calls_ip": "calls/s", "calls_user": "calls/s to a registered user",
               "calls_unpinned": "calls/s unpinned", "regs": "registrations/s",
               "regs_auth": "registrations/s digest", "regs_unpinned": "registrations/s unpinned"}

    def measure(self, label: str, key: str, trial, start: float, cap: float, sut=None) -> float:
        best = self.search(label, self.FIGURES[key], trial, start, cap, sut)
        self.results[(label, key)] = best
        if (label, self.FIGURES[key]) in self.capped:
            self.capped.add((label, key))
        return best

    def registration_searches(self, load: Load, sut, label: str) -> None:
        self.pool(self.profile.pool)
        for auth in (False, True):
            self.measure(label, "regs_auth" if auth else "regs", self.registrations(load, sut, auth),
                         self.start_rate(sut.kind, 1), CAP[1], sut)

    def phase_kamailio(self, allocator: str, complete: bool, hint: float = 0.0) -> float:
        sut = Kamailio(allocator, self.out / f"kamailio-{allocator}", self.sut_cores)
        label = sut.label
        log(f"== {label}: {' '.join(sut.argv())}")
        if complete:  # the load generator's own ceiling: UAC straight to UAS
            direct = Load(None, self.out / "sipp-direct", self.load_cores)
            direct.target = direct.uas_port
            direct.start_uas()
            self.measure("SIPp alone", "calls_ip", self.calls(direct, None, "SIPp alone",
                         f"127.0.0.1:{direct.uas_port}"), self.start_rate("direct", 0), CAP[0])
            direct.stop_uas()
        load = Load(sut.port, sut.out / "sipp", self.load_cores)
        by_ip = f"127.0.0.1:{load.uas_port}"
        sut.start()
        best = 0.0
        try:
            load.start_uas()
            load.run("uac_call.xml", "warm-up", 20, 20, {"domain": by_ip, "caller_domain": CALLER_DOMAIN},
                     ["-s", "service"])
            if complete:
                self.memory(sut, load, label)
            best = self.measure(label, "calls_ip", self.calls(load, sut, label, by_ip),
                                hint or self.start_rate("kamailio", 0), CAP[0], sut)
            self.settle(sut, label)
            self.latency_cpu(sut, load, label, best)
            if complete:
                self.registration_searches(load, sut, label)
            self.notes.append(f"{label}: {sut.shm()} (-m {KAMAILIO_SHM_MB})")
        finally:
            load.stop_uas()
            sut.stop()
        self.failures += [f"{label} log: {line}" for line in sut.diagnostics()]
        return best

    def phase_cluster(self, workers: int, complete: bool, hint: float = 0.0) -> float:
        sut = Cluster(workers, self.out / f"cluster-{workers}w", self.sut_cores if complete else self.all_cores)
        label = sut.label
        log(f"== {label} on {'cores ' + sut.cores if sut.cores else 'all cores'}")
        sut.start()
        load = Load(sut.port, sut.out / "sipp", self.load_cores if complete else self.all_cores)
        by_ip = f"127.0.0.1:{load.uas_port}"
        scaling = 0.0
        try:
            load.start_uas()
            if complete:
                self.provision_and_register_callee(sut, load, label)
            load.run("uac_call.xml", "warm-up", 20, 20, {"domain": by_ip, "caller_domain": CALLER_DOMAIN},
                     ["-s", "service"])
            if complete:
                self.memory(sut, load, label)
                best = self.measure(label, "calls_ip", self.calls(load, sut, label, by_ip),
                                    self.start_rate("cluster", 0), CAP[0], sut)
                self.measure(label, "calls_user", self.calls(load, sut, label, REG_DOMAIN, CALLEE),
                             max(best / 2, 1), CAP[0], sut)
                self.settle(sut, label)
                self.latency_cpu(sut, load, label, best)
                self.registration_searches(load, sut, label)
                # Scaling: the same cluster, now on every core, SIPp too.
                everywhere = set(range(os.cpu_count() or 1))
                assert sut.proc is not None and load.uas is not None  # both started above
                set_affinity([sut.proc.pid, *sut.pids(), load.uas.pid], everywhere)
                load.cores = self.all_cores
                hint = best
            scaling = self.measure(label, "calls_unpinned", self.calls(load, sut, label, by_ip),
                                   max(hint, self.start_rate("cluster", 0)), CAP[0], sut)
            # Registrations with the cluster on every core: what the store
            # takes when a second worker can use the second core.
            self.measure(label, "regs_unpinned", self.registrations(load, sut, False),
                         max(self.results.get((label, "regs")) or 0.0, self.start_rate("cluster", 1)),
                         CAP[1], sut)
        finally:
            load.stop_uas()
            self.failures += [f"{label} nodes: {line}" for line in sut.diagnostics()]
            sut.stop()
        return scaling

    def provision_and_register_callee(self, sut: Cluster, load: Load, label: str) -> None:
        """Digest users into etcd, then the callee's binding (its Contact is the UAS);
        the callee is written last, so its REGISTER passing means the caches hold the pool."""
        users = self.pool(self.profile.pool)
        t0 = time.monotonic()
        sut.provision(users + [CALLEE])
        self.notes.append(f"{label}: {len(users) + 1} digest users written to etcd in "
                          f"{time.monotonic() - t0:.1f} s before the measurements")
        csv_path = self.out / "callee.csv"
        csv_path.write_text(f"SEQUENTIAL\n{CALLEE};{PASSWORD};\n")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            reg = load.run("register_auth.xml", "register-callee", 1, 1,
                           {"domain": REG_DOMAIN, "run": "callee", "contact_host": "127.0.0.1",
                            "contact_port": str(load.uas_port)}, ["-inf", str(csv_path)])
            if reg.ok == 1:
                return
        raise RuntimeError(f"{label}: the callee's REGISTER did not pass within 60 s")


# -- the table --------------------------------------------------------------------------------

COLUMNS = ("Kamailio TLSF", "Kamailio default alloc", "Cluster 1e+1w", "Cluster 1e+2w", "SIPp alone")
ROWS = (
    ("calls_ip", "Max calls/s, callee by IP, < 0.1 % failed (pinned: proxy core 0, SIPp core 1)", 0),
    ("calls_user", "Max calls/s, callee a registered user (location lookup), pinned", 0),
    ("calls_unpinned", "Max calls/s, callee by IP, nothing pinned (cluster scaling)", 0),
    ("regs", "Registrations/s, new bindings, no auth, pinned", 0),
    ("regs_auth", "Registrations/s, new bindings, digest MD5", 0),
    ("regs_unpinned", "Registrations/s, new bindings, no auth, nothing pinned (cluster scaling)", 0),
    ("p50", "Set-up latency INVITE→200 p50 at half max (ms)", 2),
    ("p99", "Set-up latency INVITE→200 p99 at half max (ms)", 2),
    ("cpu", "CPU seconds per 1,000 calls, proxy processes, at half max", 3),
    ("edge_us", "Edge µs CPU per message (forwarded to a worker + sent out), at half max", 1),
    ("workers_us", "Workers' µs CPU per call (all workers together), at half max", 0),
    ("etcd_us", "etcd µs CPU per call, at half max", 0),
    ("mem_reg", "Memory per 10,000 registrations (MiB PSS)", 1),
    ("mem_call", "Memory per 10,000 established calls (MiB PSS)", 1),
)


def fmt(value: float | None, digits: int, at_least: bool = False) -> str:
    if value is None or value != value:
        return "—"
    return f"{'≥ ' if at_least else ''}{value:,.{digits}f}"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**NOT met**")


def render(bench: Bench, machine: list[str]) -> str:
    r = bench.results
    get = lambda label, key: r.get((label, key))  # noqa: E731
    lines = ["| Figure | " + " | ".join(COLUMNS) + " | Target |", "|---" * (len(COLUMNS) + 2) + "|"]
    stored = [(v, f"{c}{' unpinned' if k == 'regs_unpinned' else ''}")
              for c in ("Cluster 1e+1w", "Cluster 1e+2w") for k in ("regs", "regs_unpinned")
              if (v := get(c, k)) is not None]
    best_regs = max(stored) if stored else None

    def one_worker(key: str, met: Callable[[float], bool]) -> str:
        value = get("Cluster 1e+1w", key)
        return verdict(None if value is None else met(value))

    targets = {"regs": f"≥ 3,000 stored in etcd (pinned 1e+1w): {one_worker('regs', lambda v: v >= 3000)}",
               "regs_auth": f"≥ 3,000 stored in etcd: {one_worker('regs_auth', lambda v: v >= 3000)}",
               "regs_unpinned": f"≥ 3,000 stored in etcd (best cluster figure, {best_regs[1] if best_regs else 'n/a'}): "
                                f"{verdict(None if best_regs is None else best_regs[0] >= 3000)}",
               "p99": f"cluster ≤ 20 ms: {one_worker('p99', lambda v: v <= 20)}",
               "edge_us": f"≤ 5 µs live (issue 21): {one_worker('edge_us', lambda v: v <= 5)}"}
    for key, title, digits in ROWS:
        lines.append(f"| {title} | " + " | ".join(fmt(get(c, key), digits, (c, key) in bench.capped) for c in COLUMNS)
                     + f" | {targets.get(key, '')} |")
    kam_calls, kam_cpu = get("Kamailio TLSF", "calls_ip"), get("Kamailio TLSF", "cpu")
    ratios, best = [], None
    for col, key in (("Cluster 1e+1w", "calls_ip"), ("Cluster 1e+1w", "calls_unpinned"), ("Cluster 1e+2w", "calls_unpinned")):
        value = get(col, key)
        if value is not None and kam_calls:
            ratios.append((value / kam_calls, f"{col} {'pinned' if key == 'calls_ip' else 'unpinned'}"))
    if ratios:
        best = max(ratios)
    cells = {c: "—" for c in COLUMNS}
    for col in ("Cluster 1e+1w", "Cluster 1e+2w"):
        mine = [f"{v:.3f} ({n.split(' ', 2)[2]})" for v, n in ratios if n.startswith(col)]
        if mine:
            cells[col] = ", ".join(mine)
    lines.append("| Ratio: cluster max calls/s ÷ Kamailio TLSF | " + " | ".join(cells[c] for c in COLUMNS)
                 + f" | ≥ 0.25 (best cluster figure, {best[1] if best else 'n/a'}): "
                 f"{verdict(None if best is None else best[0] >= 0.25)} |")
    cpu = get("Cluster 1e+1w", "cpu")
    ratio = cpu / kam_cpu if cpu is not None and kam_cpu else None
    cells = {c: "—" for c in COLUMNS}
    cells["Cluster 1e+1w"] = fmt(ratio, 2)
    lines.append("| Ratio: cluster CPU per call ÷ Kamailio TLSF | " + " | ".join(cells[c] for c in COLUMNS)
                 + f" | ≤ 6: {verdict(None if ratio is None else ratio <= 6)} |")
    return "\n".join(lines + [""] + machine)


def machine_lines(sut_cores, load_cores) -> list[str]:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown")
    versions = []
    for argv in (["kamailio", "-v"], ["sipp", "-v"]):
        try:
            text = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
            found = re.search(r"(kamailio [\d.]+|SIPp v[\d.]+)", text)
            versions.append(found.group(1) if found else argv[0] + " ?")
        except OSError:
            versions.append(f"{argv[0]} not installed")
    pinned = (f"system under test on core {sut_cores}, SIPp and this script on core {load_cores}"
              if sut_cores else "nothing pinned")
    return [f"Machine: {os.cpu_count()} cores (nproc), {model}, Linux {platform.release()}, "
            f"Python {platform.python_version()}, {', '.join(versions)}.",
            f"Pinning: {pinned}; the unpinned row runs everything on every core."]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny numbers: a smoke test, not a measurement")
    parser.add_argument("--only", choices=("cluster", "kamailio"), help="run one side only")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument("--out", type=Path, default=None, help="artifact directory (default: a new one in /tmp)")
    args = parser.parse_args(argv)
    if args.only != "cluster" and not subprocess.run(["sh", "-c", "command -v kamailio"],
                                                      capture_output=True).returncode == 0:
        print("compare.py: kamailio is not installed (apt-get install -y kamailio), or use --only cluster",
              file=sys.stderr)
        return 2
    out = args.out or Path(tempfile.mkdtemp(prefix="sipcluster-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    all_cores = f"0-{cores - 1}"
    sut_cores, load_cores = (None, None) if args.no_pin or cores < 2 else ("0", "1")
    if load_cores:
        os.sched_setaffinity(0, {1})  # this script (and the probe) with the load generator
    bench = Bench(QUICK if args.quick else FULL, out, sut_cores, load_cores, all_cores, args.quick)
    log(f"artifacts in {out}")
    wall0, background = time.monotonic(), []

    def phase(name: str, run, *a, **kw):
        """Runs one phase and notes how much CPU other processes on the machine took meanwhile."""
        busy0, own0, t0 = machine_busy_seconds(), own_cpu_seconds(), time.monotonic()
        result = run(*a, **kw)
        other = max(0.0, (machine_busy_seconds() - busy0) - (own_cpu_seconds() - own0))
        background.append((name, other, time.monotonic() - t0))
        return result

    if args.only != "cluster":
        kam = phase("Kamailio TLSF", bench.phase_kamailio, "tlsf", True)
    if args.only != "kamailio":
        scale_1w = phase("Cluster 1e+1w", bench.phase_cluster, 1, True)
    if args.only != "cluster":
        phase("Kamailio default alloc", bench.phase_kamailio, "default", False, hint=max(kam / 4, 10))
    if args.only != "kamailio":
        phase("Cluster 1e+2w", bench.phase_cluster, 2, False, hint=scale_1w)
    wall = time.monotonic() - wall0
    other = sum(b[1] for b in background)
    machine = machine_lines(sut_cores, load_cores)
    machine.append(f"Run: {'--quick (smoke test, not a measurement)' if args.quick else 'full'}, {wall / 60:.1f} min; "
                   f"CPU taken by processes outside this run meanwhile: {other:.0f} s ({100 * other / wall:.0f} % of "
                   f"one core; " + ", ".join(f"{n} {100 * o / w:.0f} %" for n, o, w in background)
                   + "). Reproduce: `.venv/bin/python ops/bench/compare.py`.")
    for label, waits in bench.settled.items():
        bench.notes.append(f"{label}: settled before {len(waits)} trials, median {percentile(waits, 0.5):.1f} s, "
                           f"longest {max(waits):.1f} s (idle < 0.25 core and OPTIONS answered)")
    bench.notes += [f"stored: {line}" for line in bench.stored]
    print(render(bench, machine))
    print("\nNotes:\n" + "\n".join(f"- {n}" for n in bench.notes))
    print("\nSearches (✓ < 0.1 % failed and on schedule, ✗ not):\n" + "\n".join(f"- {t}" for t in bench.trails))
    if bench.failures:
        print("\nFailure modes:\n" + "\n".join(f"- {f}" for f in bench.failures))
    print(f"\nArtifacts: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
