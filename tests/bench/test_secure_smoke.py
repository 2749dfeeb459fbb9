"""Smoke test of ops/bench/secure.py (issue 20.7): the real edge transports in
a child process, real TLS and WSS clients, tiny numbers; the table comes out
with a figure in every row and nothing failed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_prints_every_figure():
    result = subprocess.run([sys.executable, str(ROOT / "ops" / "bench" / "secure.py"), "--quick"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
            for line in result.stdout.splitlines() if line.startswith("| ") and "---" not in line}
    for name in ("TLS handshakes/s per edge core", "WSS messages/s per edge core"):
        assert re.fullmatch(r"[\d,]+", rows[name][1]) and rows[name][1] != "0", rows[name]
    for kind in ("TLS", "WSS"):
        value, detail = rows[f"Memory per idle {kind} connection"][1:]
        assert re.fullmatch(r"[\d.]+ KB", value), value
        assert "(0 failed)" in detail
    (hold,) = [cells for name, cells in rows.items() if name.startswith("300 idle TLS connections")]
    assert hold[1] == "300 held" and "0 failed to open" in hold[2] and ", 0 failed;" in hold[2]
    # The edge logged no bug while clients came and went.
    assert "connection failed" not in result.stderr, result.stderr[-2000:]
