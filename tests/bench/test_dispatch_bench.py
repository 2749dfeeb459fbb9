"""ops/bench/dispatch.py runs and prints a row per policy with a figure per set size."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from cluster.dispatch import POLICIES

ROOT = Path(__file__).resolve().parents[2]


def test_the_bench_prints_a_figure_for_every_policy_and_size():
    out = subprocess.run([sys.executable, str(ROOT / "ops/bench/dispatch.py"), "--calls", "300", "--rounds", "1",
                          "--members", "2,5"], capture_output=True, text=True, timeout=120, check=True).stdout
    rows = {line.split("|")[1].strip(): line for line in out.splitlines()[2:]}
    assert set(rows) == set(POLICIES)
    for line in rows.values():
        assert len(re.findall(r"\d+\.\d+ \([\d,]+\)", line)) == 2, line
