"""The suite runs on the compiled build; this runs the sans-IO and edge
tests a second time on the pure-Python path (SIPCLUSTER_PURE_PYTHON=1), so
the reference and fallback keep passing too. Bounded: about a minute on a
loaded 2-core machine (the whole suite runs once, compiled)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The modules whose code has a compiled twin, and what reaches it.
PURE_RUN = ("tests/sip", "tests/edge", "tests/proxy", "tests/tu",
            "tests/speedups/test_udp_listener.py", "tests/speedups/test_build.py")


def test_the_unit_tests_pass_on_the_pure_python_path():
    env = {**os.environ, "SIPCLUSTER_PURE_PYTHON": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *PURE_RUN],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=500)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout.splitlines()[-1]
