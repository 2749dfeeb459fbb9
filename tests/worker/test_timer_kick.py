"""The worker's timer task wakes only for a deadline earlier than its sleep,
and a bug met by one timer costs that timer, not the task."""

from __future__ import annotations

import math

import trio
import trio.testing

from cluster.config import load_config
from nodes.worker.node import WorkerNode
from nodes.worker.services import Services
from nodes.worker.timer import GRAIN, TimerTask, slot


def _task(deadlines: list[float]) -> TimerTask:
    """A timer task over a core whose earliest deadline is min(deadlines)."""
    return TimerTask(lambda: min(deadlines, default=None), lambda now: None)


def test_kick_only_for_an_earlier_deadline():
    deadlines = [20.0]
    task = _task(deadlines)
    task._wake = 10.0                               # the task sleeps until t=10
    task.kick()
    assert not task.kicked, "a later deadline needs no wake-up"
    deadlines.append(5.0)
    task.kick()
    assert task.kicked, "an earlier deadline must wake the task"


def test_no_kick_while_the_timer_task_runs_and_none_without_deadlines():
    task = _task([1.0])
    task._wake = -math.inf                          # running: it recomputes before sleeping
    task.kick()
    assert not task.kicked
    idle = _task([])
    idle.kick()                                     # sleeping until inf, nothing earlier
    assert not idle.kicked


def test_the_task_sleeps_until_the_deadline_and_fires_with_now():
    fired: list[float] = []
    deadlines = [5.0]

    def fire(now):
        # Like the TU: runs what is due (a kick may wake the task early).
        for deadline in [d for d in deadlines if d <= now]:
            deadlines.remove(deadline)
            fired.append(now)

    task = TimerTask(lambda: min(deadlines, default=None), fire)

    async def main():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(task.run)
            await trio.sleep(4.9)
            assert fired == []
            await trio.sleep(0.2)
            assert len(fired) == 1 and 5.0 <= fired[0] <= 5.0 + GRAIN
            deadlines.append(7.0)
            task.kick()                             # an earlier deadline than inf
            await trio.sleep(2.0)
            assert len(fired) == 2 and 7.0 <= fired[1] <= 7.0 + GRAIN
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_bug_met_by_a_timer_costs_that_timer_not_the_loop():
    worker = WorkerNode(load_config(None, env={}, overrides={"cluster.node_id": "w-kick"}),
                        services=Services(domains=["localhost"], trusted=[], nonce_secret=b"s" * 32,
                                          nonce_ttl=300, locations=None, users=None))
    worker.inbox.close()
    fired: list[str] = []

    def transaction_timers(now):
        fired.append("transactions")
        if fired.count("transactions") == 1:
            raise RuntimeError("a bug in a timer handler")
        return []

    def proxy_timers(now):
        fired.append("tu")
        return []

    # Fault injection: the TU's two timer entry points, the first one failing once.
    worker.tu.transaction_timers = transaction_timers
    worker.tu.proxy_timers = proxy_timers
    worker.on_timers(1.0)
    worker.on_timers(2.0)
    assert fired == ["transactions", "tu", "transactions", "tu"], "the TU's timers still ran, and the handling went on"
    assert worker.stats["internal_error"] == 1


def test_deadlines_in_one_slot_fire_in_one_wakeup():
    """Timers K, J, L, M of calls a few ms apart: one wake-up per GRAIN slot,
    not one per deadline, and none fires before its deadline."""
    deadlines = [10.0 + i * GRAIN / 8 for i in range(64)]   # 8 slots' worth
    wakeups: list[float] = []
    early: list[float] = []

    def fire(now):
        wakeups.append(now)
        due = [d for d in deadlines if d <= now]
        for d in due:
            deadlines.remove(d)
        early.extend(d for d in due if d > now)

    task = TimerTask(lambda: min(deadlines, default=None), fire)

    async def main():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(task.run)
            await trio.sleep(11.0)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert deadlines == [] and early == []
    assert len(wakeups) <= 9, f"{len(wakeups)} wake-ups for 64 deadlines in 8 slots"
    assert all(later - earlier >= GRAIN * 0.99 for earlier, later in zip(wakeups, wakeups[1:]))


def test_slot_never_before_the_deadline():
    for deadline in (0.07, 0.3, 1.0, 5.0, 123456.789, 10.0 + 3 * GRAIN / 8):
        assert deadline <= slot(deadline) < deadline + GRAIN + 1e-9
    assert slot(math.inf) == math.inf and slot(-math.inf) == -math.inf
