"""Garbage collection for a long-running node: short pauses, bounded growth.

CPython's cyclic collector scans a generation's whole object list. A worker
keeps every transaction until its Timer J/K/L/M ends (up to 64×T1 = 32 s,
RFC 3261 §17 and RFC 6026), which at a few hundred calls/s is well over a
million tracked objects. Measured with ``ops/bench/worker.py``'s call flow:
the default policy's older-generation collections took 370-400 ms each and a
full collection 1.4 s, while the call path itself creates no cyclic garbage
at all (a full collection after 20,000 calls found none). Pauses like that
are lost retransmission windows and set-up latency far beyond any SIP budget.

So the young generation is collected as usual (its pause is proportional to
the threshold: about 4 ms at 20,000 objects), and whatever survives a
collection is frozen (``gc.freeze``): it is freed by reference counting when
it dies, like everything else, but never scanned again. Older collections
then only ever see objects younger than the last freeze, so they are as
cheap as a young one.

Cyclic garbage that forms among frozen objects is not reclaimed by that
alone. The safety valve is a sweep — unfreeze, full collection, freeze — a
pause proportional to everything alive (about 0.7 s per million objects).
It is due when the resident memory has grown by ``growth`` since the last
sweep and is past ``floor``, and it waits for a quiet moment (at most one
automatic collection in the last ``interval``, i.e. little allocation) unless
memory has grown by ``growth`` squared. Like a heap-doubling collector, a
leak of cycles cannot make the node hold more than that multiple of its live
memory, and a node whose live set is steady never pays for a sweep.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from dataclasses import dataclass

import trio

log = logging.getLogger("sipcluster.node")

YOUNG_THRESHOLD = 20_000
SWEEP_GROWTH = 2.0
SWEEP_FLOOR = 256 << 20  # bytes resident
CHECK_INTERVAL = 5.0
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int:
    """Resident set size of this process (Linux /proc); 0 where unknown,
    which never makes a sweep due."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


@dataclass
class CollectorStats:
    collections: int = 0
    """Automatic collections (young, and the older ones that now hold only
    what the last freeze left), plus each sweep's own."""
    pause_max_s: float = 0.0
    pause_total_s: float = 0.0
    sweeps: int = 0
    sweep_pause_total_s: float = 0.0
    sweep_collected: int = 0


class Collector:
    """Installs the policy in this interpreter; ``run`` is the sweep task."""

    def __init__(self, *, threshold: int = YOUNG_THRESHOLD, growth: float = SWEEP_GROWTH,
                 floor: int = SWEEP_FLOOR, interval: float = CHECK_INTERVAL) -> None:
        if threshold < 1 or growth <= 1.0 or floor < 0 or interval <= 0:
            raise ValueError("threshold >= 1, growth > 1, floor >= 0 and interval > 0 are required")
        self.threshold = threshold
        self.growth = growth
        self.floor = floor
        self.interval = interval
        self.stats = CollectorStats()
        self.baseline = 0
        """Resident bytes right after the last sweep (or installation)."""
        self._seen = 0
        self._started = 0.0
        self._installed = False

    def install(self) -> None:
        gc.collect()
        gc.freeze()
        self.baseline = resident_bytes()
        # The older generations' thresholds still count young collections;
        # with survivors frozen they only ever hold what the last one left.
        gc.set_threshold(self.threshold, 10, 10)
        gc.callbacks.append(self._on_collection)
        self._installed = True

    def uninstall(self) -> None:
        if self._installed:
            gc.callbacks.remove(self._on_collection)
            self._installed = False

    def _on_collection(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause = time.perf_counter() - self._started
        stats = self.stats
        stats.collections += 1
        stats.pause_total_s += pause
        if pause > stats.pause_max_s:
            stats.pause_max_s = pause
        # Survivors are long-lived from here on: out of every later scan.
        gc.freeze()

    def sweep_due(self, resident: int, quiet: bool) -> bool:
        if resident <= self.floor or resident <= self.baseline * self.growth:
            return False
        return quiet or resident > self.baseline * self.growth * self.growth

    def sweep(self) -> int:
        """Unfreeze, collect everything, freeze again; returns what was collected."""
        started = time.perf_counter()
        before = resident_bytes()
        gc.unfreeze()
        collected = gc.collect()
        gc.freeze()
        self.baseline = resident_bytes()
        pause = time.perf_counter() - started
        self.stats.sweeps += 1
        self.stats.sweep_pause_total_s += pause
        self.stats.sweep_collected += collected
        log.info("gc sweep", extra={"resident_before": before, "resident_after": self.baseline,
                                    "collected": collected, "pause_ms": round(pause * 1000, 1)})
        return collected

    async def run(self) -> None:
        while True:
            await trio.sleep(self.interval)
            collections = self.stats.collections
            quiet = collections - self._seen <= 1
            self._seen = collections
            if self.sweep_due(resident_bytes(), quiet):
                self.sweep()
                self._seen = self.stats.collections
