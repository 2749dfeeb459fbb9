"""The arithmetic of the capacity model in ops/bench/sizing.py (issue 21 point 6)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "ops" / "bench"
sys.path.insert(0, str(BENCH))

import sizing  # noqa: E402 - the benchmarks are scripts in ops/bench

INPUTS = sizing.Inputs(edge_us=50.0, worker_us=1000.0, messages_per_call=10.0, etcd_writes=8000.0)


def test_each_layer_limit_is_its_arithmetic():
    cap = sizing.capacity(INPUTS, edges=1, workers=4, skew=1.25)
    # One edge core: 1e6 / 50 µs = 20,000 messages/s ÷ 10 per call.
    assert cap.limits["edge CPU"] == pytest.approx(2000)
    # 1 Gbit/s ÷ 8 ÷ 900 bytes = 138,889 messages/s ÷ 10 per call.
    assert cap.limits["edge NIC"] == pytest.approx(1e9 / 8 / 900 / 10)
    # 4 workers × 1,000 calls/s, the busiest with 1.25 × its even share.
    assert cap.limits["workers (ring)"] == pytest.approx(3200)
    assert cap.calls == pytest.approx(2000) and cap.bottleneck == "edge CPU"
    two = sizing.capacity(INPUTS, edges=2, workers=4, skew=1.25)
    assert two.calls == pytest.approx(3200) and two.bottleneck == "workers (ring)"


def test_edge_skew_and_nic_limits():
    skewed = sizing.Inputs(50.0, 1000.0, 10.0, 8000.0, edge_skew=2.0)
    assert sizing.capacity(skewed, 1, 1, skew=1.0).limits["edge CPU"] == pytest.approx(1000)
    slow_nic = sizing.Inputs(1.0, 10.0, 10.0, 8000.0, message_bytes=1250.0, nic_gbps=0.1)
    cap = sizing.capacity(slow_nic, 1, 64, skew=1.0)
    assert cap.bottleneck == "edge NIC" and cap.calls == pytest.approx(1000)


def test_registrations_saturate_etcd_or_the_edge():
    assert sizing.registrations(INPUTS, 1, 8, skew=1.0) == (pytest.approx(8000), "etcd writes")
    slow_edge = sizing.Inputs(500.0, 1000.0, 10.0, 8000.0)
    assert sizing.registrations(slow_edge, 1, 8, skew=1.0) == (pytest.approx(1000), "edge CPU")
    with_workers = sizing.Inputs(50.0, 1000.0, 10.0, 8000.0, worker_register_us=400.0)
    assert sizing.registrations(with_workers, 4, 2, skew=1.0) == (pytest.approx(5000), "workers (ring)")


def test_the_ring_skew_comes_from_the_real_ring():
    assert sizing.ring_skew(1) == 1.0
    skews = [sizing.ring_skew(m, samples=20_000) for m in (2, 8)]
    assert all(1.0 < s < 1.3 for s in skews), skews


def test_shared_cores_and_checks():
    # 1 core shared by an edge (10 × 50 µs), a worker (1,000 µs), etcd (100 µs) and SIPp (400 µs): 2 ms per call.
    inputs = sizing.Inputs(50.0, 1000.0, 10.0, 8000.0, etcd_us=100.0)
    assert sizing.shared_cores(inputs, 1, 1.0, 400.0) == pytest.approx(500)
    model, ratio, why = sizing.check(inputs, 1, 1, 400.0, 1.0, 400.0)
    assert model == pytest.approx(500) and ratio == pytest.approx(1.25) and why == "1 shared core with SIPp"
    model, ratio, why = sizing.check(inputs, 1, 1, 500.0, None, 0.0)
    assert model == pytest.approx(1000) and why == "workers (ring)"


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="edge_us"):
        sizing.Inputs(0.0, 1000.0, 10.0, 8000.0)
    with pytest.raises(ValueError, match="edge_skew"):
        sizing.Inputs(50.0, 1000.0, 10.0, 8000.0, edge_skew=0.5)
    for text in ("1:2", "a:1:3", "1:0:5", "1:1:5:0", "1:1:5:2:x"):
        with pytest.raises(argparse.ArgumentTypeError):
            sizing.parse_point(text)
    assert sizing.parse_point("1:2:2600:2:sipp") == sizing.Point(1, 2, 2600.0, 2.0, True)
    assert sizing.parse_point("1:1:1275:1") == sizing.Point(1, 1, 1275.0, 1.0, False)
    assert sizing.parse_point("2:4:5000") == sizing.Point(2, 4, 5000.0)


def test_the_script_prints_the_table_the_checks_and_a_png(tmp_path):
    png = tmp_path / "sizing.png"
    out = subprocess.run([sys.executable, str(BENCH / "sizing.py"), "--edge-us", "50", "--worker-us", "1000",
                          "--messages-per-call", "10", "--etcd-writes", "8000", "--edges", "1", "2",
                          "--workers", "1", "2", "4", "--check", "1:1:900", "--etcd-us", "100",
                          "--check", "1:1:400:1:sipp", "--sipp-us", "400", "--plot", str(png)],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    rows = [line for line in out.splitlines() if line.startswith("| 1 |") or line.startswith("| 2 |")]
    assert len(rows) == 2 and "1,000 (workers (ring))" in rows[0] and "(edge CPU)" in rows[0]
    assert "Check 1 edge × 1 worker: model 1,000 calls/s (workers (ring)), measured 900" in out
    # 1 core for 10 × 50 + 1,000 + 100 + 400 µs: 500 calls/s.
    assert "model 500 calls/s (1 shared core with SIPp), measured 400: model ÷ measured 1.25" in out
    assert "8,000 (etcd writes)" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
