"""The worker's timer task wakes only for a deadline earlier than its sleep,
and a bug met by one timer costs that timer, not the task."""

from __future__ import annotations

import math

import trio
import trio.testing

from cluster.config import load_config
from nodes.worker.node import WorkerNode
from nodes.worker.services import Services
from nodes.worker.timer import TimerTask


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
            assert fired == [5.0]
            deadlines.append(7.0)
            task.kick()                             # an earlier deadline than inf
            await trio.sleep(2.0)
            assert fired == [5.0, 7.0]
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
