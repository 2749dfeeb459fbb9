"""The SIPp agents of a drill: a callee, a caller with a hold time (so
hundreds of calls are established when the fault comes) and registrants, each
on its own host, all sending through the carrier (Kamailio)."""

from __future__ import annotations

import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cluster import DOMAIN, SIP_PORT, DrillCluster
from .measure import failure_kinds, parse_register_log

__all__ = ["Callee", "Caller", "Registrants", "failures_seen", "last_current_calls"]

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
# RFC 3261 §17.1.1.2 / §17.1.2.2: Timer B and Timer F are 64*T1 = 32 s; with
# T1 = 500 ms that is 6 INVITE and 10 non-INVITE retransmissions.
RETRANS = ["-max_invite_retrans", "6", "-max_non_invite_retrans", "10"]


def failures_seen(*logs: Path, since: float | None = None) -> dict[str, int]:
    """``measure.failure_kinds`` over the SIPp error logs that exist."""
    total: dict[str, int] = {}
    for log in logs:
        if log.exists():
            for kind, n in failure_kinds(log.read_text(errors="replace"), since).items():
                total[kind] = total.get(kind, 0) + n
    return total


def last_current_calls(stat_csv: Path) -> int:
    """Calls SIPp still held at its last statistics line (``CurrentCall``)."""
    if not stat_csv.exists():
        return 0
    lines = [line for line in stat_csv.read_text().splitlines() if line.strip()]
    if len(lines) < 2:
        return 0
    header, last = lines[0].split(";"), lines[-1].split(";")
    return int(float(last[header.index("CurrentCall")]))


def stop_softly(proc: subprocess.Popen[Any], grace: float) -> None:
    """SIGUSR1 is SIPp's soft quit: no new calls, the running ones finish.
    Past ``grace`` seconds a second SIGUSR1 ends it at once (then SIGKILL)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGUSR1)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Callee:
    """The callee; ``lossy`` for the packet-loss drill (see start)."""

    cluster: DrillCluster
    work: Path
    lossy: bool = False
    proc: subprocess.Popen[Any] | None = None

    def start(self) -> Callee:
        # Under loss the callee takes a re-INVITE or BYE in place of a lost
        # ACK, sends no 180 and logs an unexpected message instead of
        # aborting the call (drill_uas_lossy.xml says why). The other drills
        # keep drill_uas.xml, the callee their figures were measured with:
        # with the lossy one, the rolling upgrade failed 786 calls (not
        # traced further).
        scenario, behaviours = (("drill_uas_lossy.xml", ["-default_behaviors", "all,-abortunexp"]) if self.lossy
                                else ("drill_uas.xml", []))
        self.proc = self.cluster.topology.spawn("uas", [
            "sipp", "-sf", str(SCENARIOS / scenario), "-i", self.cluster.addr("uas"),
            "-p", str(SIP_PORT), "-nostdin", "-trace_err", "-error_file", str(self.work / "callee_errors.log"),
            *behaviours, *RETRANS], log=self.work / "callee.out", cwd=self.work)
        return self

    @property
    def errors(self) -> Path:
        return self.work / "callee_errors.log"


@dataclass
class Caller:
    cluster: DrillCluster
    work: Path
    rate: float
    hold: float
    origin: float = 0.0
    proc: subprocess.Popen[Any] | None = None

    def start(self) -> Caller:
        half_ms = int(self.hold * 1000 / 2)
        self.origin = time.time()
        self.proc = self.cluster.topology.spawn("uac", [
            "sipp", f"{self.cluster.addr('kam')}:{SIP_PORT}", "-sf", str(SCENARIOS / "drill_uac.xml"),
            "-s", "drill", "-key", "domain", f"{self.cluster.addr('uas')}:{SIP_PORT}",
            "-i", self.cluster.addr("uac"), "-p", str(SIP_PORT), "-r", f"{self.rate:g}",
            "-l", str(int(self.rate * self.hold * 3) + 100), "-d", str(half_ms), "-nostdin",
            "-trace_logs", "-log_file", str(self.log), "-trace_err", "-error_file", str(self.errors),
            "-trace_stat", "-stf", str(self.work / "caller_stat.csv"), "-fd", "1", *RETRANS],
            log=self.work / "caller.out", cwd=self.work)
        return self

    @property
    def log(self) -> Path:
        return self.work / "calls.log"

    @property
    def errors(self) -> Path:
        return self.work / "caller_errors.log"

    def stop(self) -> int:
        """Stop placing calls (SIGUSR1: SIPp's soft quit) and wait for the
        calls in progress: each ends within its hold plus two Timer Fs; after
        that SIPp is told to quit and what it still holds is stuck."""
        assert self.proc is not None
        stop_softly(self.proc, self.hold + 2 * 32 + 10)
        return self.proc.returncode


@dataclass
class Registrants:
    """``count`` users, provisioned in etcd, registered through the carrier."""

    cluster: DrillCluster
    work: Path
    count: int
    expires: int = 3600
    users: list[tuple[str, str]] = field(default_factory=list)
    refresher: subprocess.Popen[Any] | None = None

    def provision(self) -> Registrants:
        self.users = [(f"drill{i:04d}", f"pw-{i}-{self.cluster.topology.tag}") for i in range(self.count)]
        self.cluster.ask({"op": "users", "domain": DOMAIN, "users": self.users})
        (self.work / "users.csv").write_text(
            "SEQUENTIAL\n" + "".join(f"{name};[authentication username={name} password={password}]\n"
                                     for name, password in self.users))
        return self

    def _sipp(self, name: str, *, rate: int, period_ms: int, total: int, port: int) -> subprocess.Popen[Any]:
        return self.cluster.topology.spawn("reg", [
            "sipp", f"{self.cluster.addr('kam')}:{SIP_PORT}", "-sf", str(SCENARIOS / "drill_register.xml"),
            "-inf", str(self.work / "users.csv"), "-key", "domain", DOMAIN, "-key", "expires", str(self.expires),
            "-i", self.cluster.addr("reg"), "-p", str(port), "-r", str(rate), "-rp", str(period_ms),
            "-m", str(total), "-nostdin", "-trace_logs", "-log_file", str(self.work / f"{name}.log"),
            "-trace_err", "-error_file", str(self.work / f"{name}_errors.log"), *RETRANS],
            log=self.work / f"{name}.out", cwd=self.work)

    def register_all(self) -> list[str]:
        """Register every user once; the users whose REGISTER got its 200."""
        proc = self._sipp("register", rate=20, period_ms=1000, total=self.count, port=SIP_PORT)
        proc.wait(self.count / 20 + 120)
        return parse_register_log((self.work / "register.log").read_text())

    def start_refreshing(self, period: float = 10.0) -> None:
        """Re-register every user once per ``period`` until ``stop`` (runs
        through the users file again and again)."""
        self.refresher = self._sipp("refresh", rate=self.count, period_ms=int(period * 1000), total=1_000_000,
                                    port=SIP_PORT + 1)

    def stop_refreshing(self) -> None:
        assert self.refresher is not None
        stop_softly(self.refresher, 2 * 32 + 10)

    def refreshed(self) -> tuple[int, int]:
        """Re-registrations tried and answered 200 (after the refresher ended)."""
        assert self.refresher is not None
        self.refresher.wait(300)
        log = self.work / "refresh.log"
        text = log.read_text() if log.exists() else ""
        return len(parse_register_log(text, "T")), len(parse_register_log(text))
