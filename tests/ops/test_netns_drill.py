"""The multi-host drill: etcd, two edges and three workers on their own
network namespaces, one worker host cut off mid-run (ops/drills/netns.sh)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

SCRIPT = Path(__file__).resolve().parents[2] / "ops" / "drills" / "netns.sh"


def test_worker_host_cut_off_mid_run_calls_continue():
    result = subprocess.run([str(SCRIPT), "--calls", "200", "--rate", "20", "--cut-after", "4"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    m = re.search(r"RESULT ok=(\d+) failed=(\d+) attempted=(\d+)", result.stdout)
    assert m, result.stdout
    ok, failed, attempted = map(int, m.groups())
    # Calls keep completing after the cut; only calls caught on the lost
    # host while its lease runs out may fail.
    assert ok >= attempted * 0.9, result.stdout
    assert "w1's lease expired: yes" in result.stdout
    # The script removed every namespace it made.
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "-hub" not in namespaces and "-w1" not in namespaces
    leftovers = subprocess.run(["pgrep", "-f", "uas.xml -i 10.231."], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", "the drill left SIPp running"
