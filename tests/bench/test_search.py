"""The rate search of the benchmark harness (ops/bench/compare.py), with
scripted trials: no processes are started."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "ops" / "bench"))

import compare  # noqa: E402


def scripted(limit: float, flukes: dict[float, int] | None = None):
    """Trials pass up to ``limit``; ``flukes[rate]`` more trials fail at a rate
    that would pass (a burst of kernel drops), then it passes."""
    flukes = dict(flukes or {})
    seen: list[float] = []

    def trial(rate: float) -> compare.Trial:
        seen.append(rate)
        ok = rate <= limit
        if ok and flukes.get(rate, 0) > 0:
            flukes[rate] -= 1
            ok = False
        calls = int(rate * 5)
        return compare.Trial(rate, calls, calls, calls if ok else calls // 2, 0 if ok else calls // 2,
                             0, True, 0.0, "", Path("/nonexistent"))

    return trial, seen


def bench(profile: compare.Profile, tmp_path: Path) -> compare.Bench:
    return compare.Bench(profile, tmp_path, None, None, "0", False)


def test_one_failed_trial_below_the_limit_does_not_end_the_search(tmp_path):
    trial, seen = scripted(12_000, flukes={8000: 1})
    found = bench(compare.FULL, tmp_path).search("K", "calls/s", trial, 2000, 16_000)
    assert seen[:4] == [2000, 4000, 8000, 8000], "the failing rate is tried a second time"
    assert found >= 12_000 / compare.FULL.precision and found <= 12_000


def test_a_rate_that_fails_twice_is_a_failure(tmp_path):
    trial, seen = scripted(6000)
    found = bench(compare.FULL, tmp_path).search("K", "calls/s", trial, 2000, 16_000)
    assert seen[:4] == [2000, 4000, 8000, 8000]
    assert 6000 / compare.FULL.precision <= found <= 6000


@pytest.mark.parametrize("profile", [compare.QUICK])
def test_the_quick_profile_takes_one_trial_per_rate(profile, tmp_path):
    trial, seen = scripted(10, flukes={100: 1})
    bench(profile, tmp_path).search("C", "calls/s", trial, 100, 1000)
    assert seen == [100, 50][:len(seen)] and len(seen) == len(set(seen))
