"""The node's garbage collection policy (nodes/collector.py)."""

from __future__ import annotations

import gc
import weakref

import pytest
import trio
import trio.testing

import nodes.collector as collector_module
from nodes.collector import Collector, resident_bytes


class Node:
    """A cycle: an object that refers to itself."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def installed():
    thresholds = gc.get_threshold()
    collector = Collector(threshold=200, floor=0)
    collector.install()
    try:
        yield collector
    finally:
        collector.uninstall()
        gc.unfreeze()
        gc.set_threshold(*thresholds)
        gc.collect()


def test_survivors_of_a_collection_are_frozen_and_scans_stay_small(installed):
    frozen = gc.get_freeze_count()
    keep = [[i] for i in range(5_000)]  # tracked containers: collections run as they are made
    assert installed.stats.collections > 0
    assert installed.stats.pause_max_s > 0
    assert gc.get_freeze_count() >= frozen + 4_000
    # What later collections scan is only what was made since the last one.
    young = sum(len(gc.get_objects(generation)) for generation in range(3))
    assert young < 2_000
    del keep


def test_frozen_objects_still_die_by_reference_count(installed):
    survivor = Node.__new__(Node)  # no cycle
    probe = weakref.ref(survivor)
    gc.collect()  # survivor is frozen now
    assert gc.get_freeze_count() > 0
    del survivor
    assert probe() is None


def test_a_sweep_reclaims_cycles_among_frozen_objects(installed):
    cycle = Node()
    probe = weakref.ref(cycle)
    gc.collect()  # frozen
    del cycle
    gc.collect()
    assert probe() is not None, "a frozen cycle is out of reach of ordinary collections"
    collected = installed.sweep()
    assert probe() is None
    assert collected >= 1
    assert installed.stats.sweeps == 1 and installed.stats.sweep_collected >= 1


def test_sweep_is_due_on_growth_and_waits_for_a_quiet_moment():
    collector = Collector(floor=100, growth=2.0, limit=0)
    collector.baseline = 1_000
    assert not collector.sweep_due(1_500, quiet=True)        # not doubled
    assert collector.sweep_due(2_500, quiet=True)            # doubled, quiet
    assert not collector.sweep_due(2_500, quiet=False)       # doubled, busy: later
    assert collector.sweep_due(4_500, quiet=False)           # quadrupled: now, busy or not
    collector.floor = 10_000
    assert not collector.sweep_due(4_500, quiet=True)        # below the floor
    grown = collector.baseline + collector_module.QUIET_SWEEP_GROWTH + 1
    collector.floor = 1 << 40
    assert collector.sweep_due(grown, quiet=True)            # far below it, but grown and quiet
    assert not collector.sweep_due(grown, quiet=False)


def test_growth_from_the_start_up_baseline_is_urgent_only_past_twice_the_floor():
    # A worker starts at ~60 MiB and legitimately holds ~300 MiB of calls at
    # a few hundred calls/s: no pause in the middle of that traffic.
    mib = 1 << 20
    collector = Collector(floor=256 * mib, growth=2.0, limit=0)
    collector.baseline = 60 * mib
    assert not collector.sweep_due(300 * mib, quiet=False)
    assert collector.sweep_due(300 * mib, quiet=True)        # but when it is quiet, yes
    assert collector.sweep_due(520 * mib, quiet=False)       # twice the floor: now


def test_a_container_limit_makes_the_sweep_urgent_before_the_oom_killer():
    mib = 1 << 20
    collector = Collector(floor=256 * mib, growth=2.0, limit=512 * mib)
    collector.baseline = 100 * mib
    assert not collector.sweep_due(400 * mib, quiet=False)   # under 80 % of the limit
    assert collector.sweep_due(420 * mib, quiet=False)       # past it: now
    collector.baseline = 300 * mib                           # live set near the limit:
    assert not collector.sweep_due(450 * mib, quiet=False)   # no sweep after sweep


def test_memory_limit_reads_a_number_or_nothing():
    assert collector_module.memory_limit() >= 0


def test_bad_settings_are_refused():
    for kwargs in ({"threshold": 0}, {"growth": 1.0}, {"floor": -1}, {"interval": 0}):
        with pytest.raises(ValueError):
            Collector(**kwargs)


def test_resident_bytes_reads_this_process():
    assert resident_bytes() > 1 << 20


def test_the_sweep_task_sweeps_when_memory_has_grown(installed, monkeypatch):
    readings = iter([10 << 30] + [1 << 30] * 100)
    monkeypatch.setattr(collector_module, "resident_bytes", lambda: next(readings))
    installed.baseline = 1 << 30
    installed.interval = 0.01

    async def main():
        with trio.move_on_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(installed.run)
                while installed.stats.sweeps == 0:
                    await trio.sleep(0.01)
                nursery.cancel_scope.cancel()

    trio.run(main)
    assert installed.stats.sweeps == 1
    assert installed.baseline == 1 << 30


def _sweeps_with(installed, monkeypatch, resident: int, cpu_per_tick: float, ticks: int = 40) -> int:
    """Runs the sweep task for ``ticks`` check intervals with a fake resident
    size and a fake CPU clock that advances ``cpu_per_tick`` per reading."""
    monkeypatch.setattr(collector_module, "resident_bytes", lambda: resident)
    monkeypatch.setattr(collector_module, "QUIET_LOOK", 0.01)
    clock = iter(i * cpu_per_tick for i in range(10_000))
    installed.cpu_clock = lambda: next(clock)
    installed.baseline = 1 << 30
    installed.floor = 0
    installed.limit = 0
    installed.interval = 0.01

    async def main():
        with trio.move_on_after(ticks * 0.01):
            await installed.run()

    trio.run(main)
    return installed.stats.sweeps


def test_a_busy_node_is_not_swept_until_memory_is_urgent(installed, monkeypatch):
    # Doubled but busy (a full core's worth of CPU per interval): wait.
    assert _sweeps_with(installed, monkeypatch, 3 << 30, cpu_per_tick=0.01) == 0


def test_an_idle_node_is_swept_once_memory_has_doubled(installed, monkeypatch):
    assert _sweeps_with(installed, monkeypatch, 3 << 30, cpu_per_tick=0.0) >= 1


def _idle_trimmer(monkeypatch, readings: list[int]) -> tuple[Collector, list[int]]:
    """A collector far below its floor and any quiet sweep (trims alone),
    idle at every check, over these resident readings; and its trims."""
    it = iter(readings)
    monkeypatch.setattr(collector_module, "resident_bytes", lambda: next(it))
    trims: list[int] = []
    collector = Collector(floor=1 << 40, interval=0.01, trim=trims.append)
    collector.baseline = 1 << 40
    collector.cpu_clock = lambda: 0.0
    return collector, trims


def test_a_quiet_node_gives_free_heap_back_once_memory_rose(monkeypatch):
    # Resident readings: steady, then up 8 MiB and more (a burst of large
    # messages), then back down after the trim.
    collector, trims = _idle_trimmer(monkeypatch, [100 << 20] * 3 + [120 << 20] * 3 + [101 << 20] * 100)

    async def main():
        with trio.move_on_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(collector.run)
                while collector.stats.trims == 0:
                    await trio.sleep(0.01)
                await trio.sleep(0.2)
                nursery.cancel_scope.cancel()

    trio.run(main)
    assert trims == [0] and collector.stats.trims == 1 and collector.stats.sweeps == 0


def test_a_busy_node_does_not_trim(monkeypatch):
    monkeypatch.setattr(collector_module, "resident_bytes", lambda: 500 << 20)
    trims: list[int] = []
    collector = Collector(floor=1 << 40, interval=0.01, trim=trims.append)
    clock = iter(i * 1.0 for i in range(10_000))  # a full core every check
    collector.cpu_clock = lambda: next(clock)

    async def main():
        with trio.move_on_after(0.3):
            await collector.run()

    trio.run(main)
    assert trims == []


def test_a_quiet_node_trims_again_while_it_stays_above_its_floor(monkeypatch):
    # The first trim came while transactions still held a burst's messages;
    # what they free afterwards does not raise the reading, so a trim keyed
    # to the last one never came and the worker stayed tens of MB up.
    collector, trims = _idle_trimmer(monkeypatch, [100 << 20] * 3 + [150 << 20] * 2 + [140 << 20] * 10_000)

    async def main():
        with trio.move_on_after(collector_module.TRIM_EVERY * 2.5):
            await collector.run()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert 2 <= collector.stats.trims <= 3 and trims == [0] * collector.stats.trims


def _quiet_sweeps(installed, monkeypatch, cpu_per_tick: float) -> int:
    """Sweeps of the task over readings at the baseline, then grown by
    QUIET_SWEEP_GROWTH and more (a burst), staying there."""
    low = installed.baseline
    grown = low + collector_module.QUIET_SWEEP_GROWTH + (1 << 20)
    readings = iter([low] * 3 + [grown] * 10_000)
    monkeypatch.setattr(collector_module, "resident_bytes", lambda: next(readings))
    clock = iter(i * cpu_per_tick for i in range(10_000))
    installed.cpu_clock = lambda: next(clock)
    monkeypatch.setattr(collector_module, "QUIET_LOOK", 0.01)
    installed.limit = 0
    installed.floor = 1 << 40  # far below the floor: only the quiet rule can sweep
    installed.interval = 0.01
    installed.trim = lambda pad: None

    async def main():
        with trio.move_on_after(0.4):
            await installed.run()

    trio.run(main)
    return installed.stats.sweeps


def test_a_quiet_node_sweeps_once_its_memory_grew_since_the_last_sweep(installed, monkeypatch):
    # Below the floor: a burst's objects frozen while in use and left in
    # cycles hold their memory until a sweep. A quiet node that grew
    # QUIET_SWEEP_GROWTH since its last sweep sweeps once, then not again
    # while it stays there.
    assert _quiet_sweeps(installed, monkeypatch, cpu_per_tick=0.0) == 1


def test_a_busy_node_is_not_swept_below_the_floor(installed, monkeypatch):
    assert _quiet_sweeps(installed, monkeypatch, cpu_per_tick=0.01) == 0
