"""Smoke test of the flood benchmark (ops/bench/flood.py, issue 19 part 4):
``--quick`` with ``--rate`` 20,000 (each source is past its burst within
half a second) runs the whole thing for real (cluster, SIPp calls, both
floods from their own loopback sources, bans read back, VmRSS sampled) and
prints the table with a figure in every cell and a verdict on every target;
``--out`` keeps SIPp's per-second statistics."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
ROWS = ("Flood rate reached", "Calls completed during the flood", "Sources banned", "Calls complete again",
        "Edge RSS", "Worker RSS")


def test_quick_flood_run_prints_every_figure(tmp_path):
    out = tmp_path / "flood"
    result = subprocess.run([sys.executable, str(ROOT / "ops" / "bench" / "flood.py"), "--quick", "--rate", "20000",
                             "--out", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    table = result.stdout
    assert "| Figure | Garbage flood | OPTIONS flood | Target |" in table, result.stdout + result.stderr[-3000:]
    for row in ROWS:
        line = next((line for line in table.splitlines() if line.startswith(f"| {row}")), None)
        assert line is not None, (row, table)
        garbage, options, target = [cell.strip() for cell in line.strip("|").split("|")[1:4]]
        assert garbage and options and ("PASS" in target or "FAIL" in target), line
    # Both floods reached (nearly) the rate asked for and were banned.
    assert "8 of 8" in table
    assert "Overall:" in table and (out / "sipp").is_dir() and list(out.glob("sipp/*-calls/stat.csv"))
    assert result.returncode == (0 if "Overall: PASS" in table else 1)


def test_a_rate_that_is_not_positive_is_refused():
    result = subprocess.run([sys.executable, str(ROOT / "ops" / "bench" / "flood.py"), "--rate", "0"],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 2 and "--rate must be positive" in result.stderr
