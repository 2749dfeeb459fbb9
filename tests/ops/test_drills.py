"""The failover drills the suite runs (issue 18): each brings up two edges,
three workers and three etcd members on simulated hosts behind Kamailio,
runs calls with a hold time and registrations, injects its fault and must
meet its targets. Modest rates, so they hold on a loaded 2-core machine; the
full-size runs are ops/drills/run.sh NAME (figures in ops/guide/drills.md)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from ops.drills.topology import leftovers

pytestmark = pytest.mark.e2e

RUN = Path(__file__).resolve().parents[2] / "ops" / "drills" / "run.sh"


def run_drill(name: str, out: Path) -> tuple[subprocess.CompletedProcess[str], dict]:
    result = subprocess.run(
        [str(RUN), name, "--rate", "10", "--hold", "10", "--fault-at", "12", "--tail", "5",
         "--users", "20", "--out", str(out)], capture_output=True, text=True, timeout=400)
    outcome = json.loads((out / "outcome.json").read_text()) if (out / "outcome.json").exists() else {}
    return result, outcome


def reordered_180s(result: subprocess.CompletedProcess[str], outcome: dict) -> int:
    """Calls SIPp aborted on a 180 arriving after its call's 200: about one
    call in 700 with or without a fault, which the carrier (Kamailio's two
    receiving processes) reorders; the callee sends one 180, so it is not
    duplicate processing. A drill that ran to its table tolerates those,
    and nothing else."""
    assert outcome, result.stdout[-4000:] + result.stderr[-4000:]  # the drill ran to its end
    seen = outcome.get("failures_seen", {})
    assert set(seen) <= {"stray 180"}, (seen, result.stdout[-4000:])
    return int(seen.get("stray 180", 0))


def _check_clean(out: Path) -> None:
    # The drill removed every namespace it made (named with its pid).
    logs = next(out.glob("drill-*"))
    assert not any(leftovers(f"d{pid}") for pid in _runner_pids(logs))
    assert (out / "drill.png").read_bytes()[:4] == b"\x89PNG"


def _runner_pids(logs: Path) -> list[int]:
    # The runner's pid is in every namespace name; the logs name it through
    # the cluster's nonce secret ("drill-nonce-secret-d<pid>").
    text = (logs / "w1.toml").read_text()
    return [int(text.split("drill-nonce-secret-d", 1)[1].split('"', 1)[0])]


def test_etcd_member_kill_fails_no_call(tmp_path):
    result, outcome = run_drill("etcd-kill", tmp_path)
    reordered = reordered_180s(result, outcome)
    # Hundreds of calls, a hundred established when the member died.
    assert outcome["calls"] >= 150 and outcome["established_at_fault"] >= 80, outcome
    assert outcome["established_lost"] + outcome["new_failed"] <= reordered, outcome
    assert outcome["registrations"] == 20 and outcome["registrations_lost"] == 0, outcome
    _check_clean(tmp_path)


def worker_loss_keeps_established_calls(name: str, tmp_path: Path) -> None:
    """Issue 18 part 1's targets for a lost worker: every established call
    ends (bar the carrier's reordered 180s), new calls fail only in the
    first second after the fault."""
    result, outcome = run_drill(name, tmp_path)
    reordered = reordered_180s(result, outcome)
    assert outcome["established_at_fault"] >= 80 and outcome["established_lost"] <= reordered, outcome
    assert outcome["new_failed_late"] == 0, outcome
    _check_clean(tmp_path)


def test_worker_host_cut_off_loses_no_established_call(tmp_path):
    # The multi-host drill this file replaces (ops/drills/netns.sh): a worker
    # host's link goes down mid-run; the ring moves its Call-IDs on.
    worker_loss_keeps_established_calls("worker-link-down", tmp_path)


def test_worker_kill_loses_no_established_call(tmp_path):
    # kill -9 of a worker (issue 18 part 1): the edges notice the dead link
    # within a second and route its Call-IDs to their next owner, so no BYE
    # or re-INVITE of an established call is answered 503 while the dead
    # worker's lease runs out, and new calls fail only in the first second.
    worker_loss_keeps_established_calls("worker-kill", tmp_path)


def test_edge_kill_keeps_the_established_calls(tmp_path):
    # kill -9 of edge1 (issue 18 part 2): Record-Route names the cluster, so
    # Kamailio's SRV failover brings the BYEs and re-INVITEs of the dialogs
    # set up through edge1 to edge2, and the callee answers them there (to
    # the Via's sent-by, RFC 3261 §18.2.2: before drill_uas.xml said so, the
    # callee's SIPp answered them to the dead edge1 and about half the
    # established calls were lost). Only the calls established at the fault
    # count here; those answered after it are new calls (some lose their
    # first ACK: Kamailio forwards the ACK for a 2xx statelessly to an SRV
    # target of its choice, without failover, so some reach the dead edge1).
    # A carrier retrying a dead edge for 16 s per in-dialog request on a
    # loaded machine still lost one of 402 in a full-size run; hence a tenth,
    # not zero, is the line here.
    result, outcome = run_drill("edge-kill", tmp_path)
    assert outcome, result.stdout[-4000:] + result.stderr[-4000:]
    assert outcome["established_at_fault"] >= 80, outcome
    assert outcome["established_lost"] <= outcome["established_at_fault"] // 10, outcome
    assert outcome["registrations"] == 20 and outcome["registrations_lost"] == 0, outcome
    _check_clean(tmp_path)
