"""Smoke test of the benchmark harness (ops/bench/compare.py, issue 6).

Runs the real thing with tiny numbers: ``sipcluster up`` (1 edge + 1 worker,
then 1 edge + 2 workers), SIPp for calls, registrations with and without
digest, the timed set-up probe and the /proc accounting, and checks that the
one markdown table comes out with a number in every cluster cell. Kamailio is
not part of it (``--only cluster``); the full comparison is the harness's
default mode.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
NUMBER = re.compile(r"-?\d[\d,]*(\.\d+)?")
CLUSTER_ROWS = ("Max calls/s, callee by IP, <", "Max calls/s, callee a registered user",
                "Max calls/s, callee by IP, nothing pinned", "Registrations/s, new bindings, no auth, pinned",
                "Registrations/s, new bindings, no auth, nothing pinned",
                "Registrations/s, new bindings, digest", "p50 at half max", "p99 at half max",
                "CPU seconds per 1,000 calls", "Edge µs CPU per message", "Workers' µs CPU per call",
                "etcd µs CPU per call", "Memory per 10,000 registrations",
                "Memory per 10,000 established calls")


def table(stdout: str) -> tuple[list[str], dict[str, list[str]]]:
    rows = [line for line in stdout.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in rows[0].strip("|").split("|")]
    body = {}
    for line in rows[1:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        body[cells[0]] = cells
    return header, body


def row(body: dict[str, list[str]], fragment: str) -> list[str]:
    found = [cells for title, cells in body.items() if fragment in title]
    assert len(found) == 1, (fragment, list(body))
    return found[0]


def test_quick_cluster_run_prints_the_table_with_numbers(tmp_path):
    assert shutil.which("sipp"), "SIPp must be installed (ops/dev.sh installs sip-tester)"
    result = subprocess.run(
        [sys.executable, str(ROOT / "ops" / "bench" / "compare.py"), "--quick", "--only", "cluster",
         "--out", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    header, body = table(result.stdout)
    assert header[:2] == ["Figure", "Kamailio TLSF"] and "Cluster 1e+1w" in header, header
    one, two = header.index("Cluster 1e+1w"), header.index("Cluster 1e+2w")
    for fragment in CLUSTER_ROWS:
        cell = row(body, fragment)[one]
        assert NUMBER.fullmatch(cell), (fragment, cell)
    # Throughput and latency are real measurements: positive, and every call passed.
    assert float(row(body, "Max calls/s, callee by IP, <")[one].replace(",", "")) > 0
    assert float(row(body, "p99 at half max")[one]) > 0
    assert float(row(body, "CPU seconds per 1,000 calls")[one]) > 0
    # The split by process (issue 21): the edge's CPU over the messages its counters saw.
    assert float(row(body, "Edge µs CPU per message")[one]) > 0
    assert float(row(body, "Workers' µs CPU per call")[one].replace(",", "")) > 0
    assert re.search(r"Cluster 1e\+1w: CPU per call at half max by process: edge-1 [\d.]+ ms .*worker-1 "
                     r"[\d.]+ ms .*; the edge handled [\d.]+ messages per call", result.stdout)
    assert NUMBER.fullmatch(row(body, "callee by IP, nothing pinned")[two])
    assert NUMBER.fullmatch(row(body, "no auth, nothing pinned")[two])
    # Kamailio was not run: its cells are empty and the ratios say so.
    assert row(body, "Max calls/s, callee by IP, <")[header.index("Kamailio TLSF")] == "—"
    assert "n/a" in row(body, "Ratio: cluster max calls/s")[-1]
    assert "Machine: " in result.stdout and "nproc" in result.stdout
    # Every acknowledged registration is a binding key in etcd.
    stored = re.findall(r"stored: .*?: (\d+) × 200 OK, (-?\d+) new binding keys in etcd", result.stdout)
    assert len(stored) >= 2 and all(ok == keys and int(ok) > 0 for ok, keys in stored), stored
    # Artifacts: SIPp statistics of every run and the nodes' logs.
    assert list(tmp_path.glob("cluster-1w/sipp/*/stat.csv"))
    assert list(tmp_path.glob("cluster-1w/up/worker-1.log"))
