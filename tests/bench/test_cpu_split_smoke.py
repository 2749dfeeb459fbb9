"""Smoke run of ops/bench/cpu_split.py (issue 21): a real ``sipcluster up``
(1 edge, 2 workers) carrying SIPp calls at 50 calls/s for 2 s after 1 s
idle, and the per-process table that comes out (about 15 s). Kamailio is
left out (``--only cluster``); the parsing is tested on recorded inputs in
test_cpu_split.py."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CELL = re.compile(r"\d+\.\d{3} \(\d+\.\d\)")


def test_quick_cluster_run_prints_a_cell_per_process(tmp_path):
    assert shutil.which("sipp"), "SIPp must be installed (ops/dev.sh installs sip-tester)"
    result = subprocess.run([sys.executable, str(ROOT / "ops" / "bench" / "cpu_split.py"), "--quick", "--only",
                             "cluster", "--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT,
                            timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in result.stdout.splitlines()
            if line.startswith("| ")]
    header, body = rows[0], {row[1]: row for row in rows[1:]}
    for role in ("edge-1", "worker-1", "worker-2", "etcd", "sipp caller", "sipp callee"):
        assert role in header, header
    assert set(body) == {"idle", "50"}, body
    calls = body["50"]
    ok = int(calls[2].split()[0].replace(",", ""))
    assert ok >= 90, calls
    for role in ("edge-1", "worker-1", "worker-2", "etcd"):
        assert CELL.fullmatch(calls[header.index(role)]), (role, calls)
    assert float(calls[header.index("total ms/call (without SIPp)")]) > 0
    assert "Load average before / after" in result.stdout
    assert list(tmp_path.glob("cluster-2w/sipp/*-fixed-50/stat.csv"))
