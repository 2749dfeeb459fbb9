"""Smoke test of ops/bench/rfc3263.py: ``--quick`` runs for real (dnsmasq,
a silent server, the TU and the resolver on one loop) and prints the table
with a number in every measured row."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_quick_run_prints_every_row():
    result = subprocess.run([sys.executable, str(ROOT / "ops" / "bench" / "rfc3263.py"), "--quick"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip()
            for line in result.stdout.splitlines() if line.startswith("| ") and "---" not in line}
    for name in ("Locations/s, cached", "Locations/s, uncached", "Event-loop tick lateness while DNS is silent",
                 "The same ticker on an idle loop", "The same without garbage-collector pauses",
                 "CPU the loop spent between a tick's sleep and its wake-up", "Collector pauses on that loop"):
        (value,) = [v for k, v in rows.items() if k.startswith(name)]
        assert re.search(r"\d", value), (name, value)
    cached = float(rows["Locations/s, cached (carrier.test: NAPTR, SRV, 2 targets)"].replace(",", ""))
    uncached = float(rows["Locations/s, uncached (6 lookups each to dnsmasq)"].replace(",", ""))
    assert cached > uncached > 0
    assert "dispatch" in rows["Destination-set choice per call"]
