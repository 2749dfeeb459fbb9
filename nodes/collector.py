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
sweep and is past ``floor``, and it waits for a quiet moment: the process
used at most ``QUIET_SHARE`` of a core over the last ``interval`` and again
over a short look just before the sweep. (Counting collections instead does
not work: a node in steady state frees as much as it allocates, so young
collections become rare exactly when it is busiest.) It
stops waiting — the pause lands in the middle of traffic — only when memory
is urgent: ``growth`` times past both ``floor`` and ``growth`` × the last
baseline, or past ``LIMIT_SHARE`` of the container's memory limit (cgroup),
whichever comes first. The floor is in that rule because a node's first
baseline is taken at start-up, before it holds any calls: a worker ramping up
to a few hundred calls/s legitimately grows from ~60 MiB to ~300 MiB, and
sweeping it then would cost a 0.5 s pause for nothing (measured: a sweep at
278 MiB in a 300 calls/s run collected 0 objects and held 8 % of that run's
call set-ups past 20 ms). Like a heap-doubling collector, a leak of cycles
cannot make the node hold more than a fixed multiple of its live memory, and
a node whose live set is steady never pays for a sweep.

Freed memory is not always given back: glibc keeps freed heap pages for
reuse, so a burst of large messages (issue 19: thousands of 30 KB header
values) left a worker tens of MiB above its baseline long after the messages
were gone. When the node is quiet and resident memory is ``TRIM_GROWTH``
above what it was after the last trim, ``malloc_trim(0)`` returns the free
pages (a few milliseconds; never on a busy node). A quiet node whose memory
grew ``QUIET_SWEEP_GROWTH`` since its last sweep also sweeps, below
the floor too: a burst's objects frozen while in use and left in cycles
would otherwise hold their memory until the floor is reached.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import time
from dataclasses import dataclass

import trio

log = logging.getLogger("sipcluster.node")

YOUNG_THRESHOLD = 20_000
SWEEP_GROWTH = 2.0
SWEEP_FLOOR = 256 << 20  # bytes resident
CHECK_INTERVAL = 5.0
QUIET_SHARE = 0.05  # of one core: below this the node is idle enough to pause
QUIET_LOOK = 0.5  # seconds of the look just before a sweep
LIMIT_SHARE = 0.8  # of the cgroup memory limit: sweep before the OOM killer acts
TRIM_GROWTH = 8 << 20  # bytes resident above the lowest reading that make a quiet node trim
TRIM_EVERY = 5.0  # seconds between two trims of a quiet node still above its floor
QUIET_SWEEP_GROWTH = 32 << 20  # bytes resident above the last sweep's that make a quiet node sweep
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int:
    """Resident set size of this process (Linux /proc); 0 where unknown,
    which never makes a sweep due."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none."""
    try:
        import ctypes
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


def memory_limit() -> int:
    """The memory limit of this process's cgroup (v2 ``memory.max``, else v1
    ``memory.limit_in_bytes``); 0 when there is none or it cannot be read."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path, "rb") as limit_file:
                text = limit_file.read().strip()
        except OSError:
            continue
        if text.isdigit():
            value = int(text)
            # cgroup v1 reports "no limit" as a page-rounded huge number.
            return value if value < 1 << 60 else 0
        return 0
    return 0


@dataclass
class CollectorStats:
    trims: int = 0
    """``malloc_trim`` calls that gave free heap pages back (quiet node, memory up)."""
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
                 floor: int = SWEEP_FLOOR, interval: float = CHECK_INTERVAL,
                 limit: int | None = None, trim=None) -> None:
        """``trim``: gives free heap pages back (``malloc_trim``; default
        glibc's, none where the C library lacks it)."""
        if threshold < 1 or growth <= 1.0 or floor < 0 or interval <= 0:
            raise ValueError("threshold >= 1, growth > 1, floor >= 0 and interval > 0 are required")
        self.threshold = threshold
        self.growth = growth
        self.floor = floor
        self.interval = interval
        self.limit = memory_limit() if limit is None else limit
        self.trim = _malloc_trim() if trim is None else trim
        """Bytes the container may hold (0: unknown or unlimited)."""
        self.stats = CollectorStats()
        self.baseline = 0
        """Resident bytes right after the last sweep (or installation)."""
        self.cpu_clock = time.process_time
        """CPU seconds this process has used (replaceable in tests)."""
        self._cpu = 0.0
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
        if quiet and resident > self.baseline + QUIET_SWEEP_GROWTH:
            # Below the floor too: a burst's objects that survived a young
            # collection while in use were frozen, and whatever of them ends
            # in a reference cycle is freed only by a sweep. A quiet node
            # pays that pause at no one's expense, once per
            # QUIET_SWEEP_GROWTH of growth since its last sweep.
            return True
        growth = self.growth
        if resident <= self.floor or resident <= self.baseline * growth:
            return False
        if quiet:
            return True
        urgent = growth * max(self.floor, self.baseline * growth)
        if self.limit:
            urgent = min(urgent, self.limit * LIMIT_SHARE)
        return resident > urgent

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

    def _quiet_for(self, seconds: float) -> bool:
        """Whether the process used at most QUIET_SHARE of a core since the
        last call (``seconds`` ago)."""
        used = self.cpu_clock()
        busy = (used - self._cpu) / seconds
        self._cpu = used
        return busy <= QUIET_SHARE

    async def run(self) -> None:
        self._cpu = self.cpu_clock()
        trim = self.trim
        floor = math.inf
        last_trim = -math.inf
        while True:
            await trio.sleep(self.interval)
            quiet = self._quiet_for(self.interval)
            resident = resident_bytes()
            floor = min(floor, resident)
            # Against the lowest reading, not the last trim: what transactions
            # free after a trim stays with malloc without raising the reading,
            # so a quiet node above its floor trims again (at most every
            # TRIM_EVERY seconds; a trim of a quiet heap costs milliseconds).
            now = trio.current_time()
            if quiet and trim is not None and resident > floor + TRIM_GROWTH and now - last_trim >= TRIM_EVERY:
                trim(0)
                last_trim = now
                self.stats.trims += 1
            if not self.sweep_due(resident, quiet):
                continue
            if quiet:
                # The interval was idle; make sure traffic did not just start.
                await trio.sleep(QUIET_LOOK)
                if not self._quiet_for(QUIET_LOOK) and not self.sweep_due(resident_bytes(), False):
                    continue
            self.sweep()
            self._cpu = self.cpu_clock()
