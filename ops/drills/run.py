"""Run one failover drill: ``python -m ops.drills.run NAME`` (what
``ops/drills/run.sh NAME`` calls; root is needed for the namespaces).

Brings up the cluster on simulated hosts, registers users, starts the calls
(rate, hold), injects the drill's fault ``--fault-at`` seconds into the load,
keeps calling ``--tail`` seconds after the fault is over, lets every call
finish, then prints the table (PASS/FAIL per target) and writes ``table.md``,
``drill.png`` and ``outcome.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

from .cluster import DrillCluster, default_settings, node_config
from .faults import DRILLS, Drill
from .measure import Outcome, abort_times, failures_by_phase, parse_call_log, series, summarize
from .report import plot, table, verdicts
from .topology import cleanup_on_exit
from .traffic import Callee, Caller, Registrants, failures_seen, last_current_calls

__all__ = ["DrillResult", "main", "run_drill"]


@dataclasses.dataclass(frozen=True)
class DrillResult:
    drill: Drill
    outcome: Outcome
    table: str
    picture: Path
    passed: bool


def run_drill(drill: Drill, *, out: Path, rate: float = 20, hold: float = 20, fault_at: float = 25,
              tail: float = 10, users: int = 100, lease_ttl: int = 3,
              settings: tuple[str, ...] = ()) -> DrillResult:
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"drill-{drill.name}-", dir=out))
    cluster = DrillCluster(work, lease_ttl=lease_ttl, dns_ttl=drill.dns_ttl, settings=settings)
    cleanup_on_exit(cluster.topology)
    try:
        cluster.start()
        registrants = Registrants(cluster, work, users).provision()
        registered = registrants.register_all()
        Callee(cluster, work, lossy=drill.lossy_callee).start()
        caller = Caller(cluster, work, rate=rate, hold=hold).start()
        registrants.start_refreshing()
        time.sleep(fault_at)
        fault_wall = time.time()
        print(f"[{drill.name}] fault at {fault_at:.0f} s: {drill.fault}", flush=True)
        drill.inject(cluster)
        fault_end = time.time()
        time.sleep(tail)
        caller.stop()
        registrants.stop_refreshing()
        tried, answered = registrants.refreshed()
        bound = sorted({aor.split(":", 1)[-1].split("@", 1)[0] for aor in cluster.bindings()})
    finally:
        cluster.stop()
    (work / RUN_RECORD).write_text(json.dumps({
        "drill": drill.name, "rate": rate, "hold": hold, "fault_at": fault_at, "users": users,
        "lease_ttl": lease_ttl, "dns_ttl": drill.dns_ttl, "lossy_callee": drill.lossy_callee, "settings": list(settings), "origin": caller.origin,
        "fault_wall": fault_wall, "fault_end": fault_end, "registered": registered, "bound": bound,
        "refreshes": tried, "refreshed": answered, "events": cluster.events}, indent=1))
    return analyse(work, out)


RUN_RECORD = "run.json"


def analyse(work: Path, out: Path) -> DrillResult:
    """The table, picture and outcome of a finished run, from its logs and
    ``run.json`` (so a run can be analysed again: ``--reanalyse``)."""
    run = json.loads((work / RUN_RECORD).read_text())
    drill = DRILLS[run["drill"]]
    log = work / "calls.log"
    errors = work / "caller_errors.log"
    calls = parse_call_log(log.read_text() if log.exists() else "", origin=run["origin"],
                           aborted=abort_times(errors.read_text(errors="replace")) if errors.exists() else None)
    outcome = summarize(
        calls, fault_at=run["fault_wall"], hold=run["hold"], registered=run["registered"], bound=run["bound"],
        refreshes=run["refreshes"], refreshed=run["refreshed"],
        failures_seen=failures_seen(work / "caller_errors.log", work / "callee_errors.log",
                                    since=run["fault_wall"] - 1),
        stuck_calls=last_current_calls(work / "caller_stat.csv"))
    setup = (f"{run['rate']:g} calls/s held {run['hold']:g} s (re-INVITE half-way, then BYE), "
             f"{run['users']} users re-registering every 10 s; 2 edges behind Kamailio (SRV failover), "
             f"3 workers, 3 etcd members, lease TTL {run['lease_ttl']} s; carrier's DNS TTL "
             f"{run.get('dns_ttl', 1)} s{'; callee for loss (drill_uas_lossy.xml)' if run.get('lossy_callee') else ''}; "
             f"fault {run['fault_at']:g} s "
             f"into the load." + (f" Node settings: {'; '.join(run['settings'])}." if run.get("settings") else ""))
    phases = failures_by_phase(calls, [tuple(e) for e in run.get("events", [])], fault_at=run["fault_wall"],
                               hold=run["hold"])
    if len(phases) > 1 or run.get("events"):
        setup += "\n\nFailed requests by the fault step before them: " + (", ".join(
            f"{what}: {n}" for what, n in phases.items()) or "none") + "."
    text = table(drill.name, drill.fault, outcome, drill.targets, setup=setup)
    origin = run["origin"]
    picture = plot(out / "drill.png", f"{drill.name}: {drill.fault}",
                   series(calls, hold=run["hold"], origin=origin),
                   run["fault_wall"] - origin, run["fault_end"] - origin)
    (out / "table.md").write_text(text)
    (out / "outcome.json").write_text(json.dumps(dataclasses.asdict(outcome), indent=1))
    passed = all(ok for _, ok, _ in verdicts(outcome, drill.targets))
    return DrillResult(drill, outcome, text, picture, passed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ops/drills/run.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=sorted(DRILLS), help="the drill")
    parser.add_argument("--reanalyse", type=Path, default=None, metavar="RUN_DIR",
                        help="do not run: analyse again the finished run whose logs are in RUN_DIR "
                             "(the drill-NAME-* directory; table and picture go to --out or its parent)")
    parser.add_argument("--rate", type=float, default=20, help="new calls per second (default 20)")
    parser.add_argument("--hold", type=float, default=20, help="seconds each call is held (default 20)")
    parser.add_argument("--fault-at", type=float, default=25, help="seconds of load before the fault")
    parser.add_argument("--tail", type=float, default=10, help="seconds of load after the fault is over")
    parser.add_argument("--users", type=int, default=100, help="registered users (default 100)")
    parser.add_argument("--lease-ttl", type=int, default=3, help="cluster.lease_ttl of the nodes")
    parser.add_argument("--setting", action="append", default=None, metavar="SECTION.KEY=VALUE",
                        help="a node setting, e.g. 'worker.t1 = 0.5' (repeatable; replaces the default "
                             "cluster.record_route naming the cluster, where the nodes support it)")
    parser.add_argument("--out", type=Path, default=None,
                        help="directory for table.md, drill.png, outcome.json and the logs "
                             "(default ops/drills/results/NAME)")
    args = parser.parse_args(argv)
    for name in ("rate", "hold", "fault_at", "tail", "users"):
        if getattr(args, name) <= 0 and name != "tail":
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.reanalyse is not None:
        record = args.reanalyse / RUN_RECORD
        if not record.is_file() or json.loads(record.read_text()).get("drill") != args.name:
            parser.error(f"--reanalyse: {record} is not the record of a finished {args.name} run")
        result = analyse(args.reanalyse, args.out or args.reanalyse.parent)
        print(result.table)
        print(f"RESULT {args.name} {'PASS' if result.passed else 'FAIL'}")
        return 0 if result.passed else 1
    settings = tuple(default_settings() if args.setting is None else args.setting)
    try:
        node_config("check", "10.0.0.1", [], lease_ttl=args.lease_ttl, secret="x", settings=settings)
    except ValueError as exc:
        parser.error(f"--setting: {exc}")
    out = args.out or Path(__file__).resolve().parent / "results" / args.name
    result = run_drill(DRILLS[args.name], out=out, rate=args.rate, hold=args.hold, fault_at=args.fault_at,
                       tail=args.tail, users=args.users, lease_ttl=args.lease_ttl,
                       settings=settings)
    print(result.table)
    print(f"picture: {result.picture}")
    print(f"RESULT {args.name} {'PASS' if result.passed else 'FAIL'}")
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
