"""The worker wakes its timer task only for a deadline earlier than its sleep."""

from __future__ import annotations

import math

from cluster.config import load_config
from nodes.worker.node import WorkerNode


class Owner:
    """A transaction's two timer slots, as the timer queue sees them."""

    def __init__(self) -> None:
        self._retransmit = None
        self._timeout = None


def _arm(worker: WorkerNode, deadline: float) -> None:
    owner = Owner()
    owner._timeout = worker.transactions._queue.push(deadline, owner, "K")


def _worker() -> WorkerNode:
    worker = WorkerNode(load_config(None, env={}, overrides={"cluster.node_id": "w-kick"}))
    worker.inbox.close()
    return worker


def test_kick_only_for_an_earlier_deadline():
    worker = _worker()
    worker._timer_wake = 10.0                       # the task sleeps until t=10
    _arm(worker, 20.0)
    worker.kick_timers()
    assert not worker._timer_kick.is_set(), "a later deadline needs no wake-up"
    _arm(worker, 5.0)
    worker.kick_timers()
    assert worker._timer_kick.is_set(), "an earlier deadline must wake the task"


def test_no_kick_while_the_timer_task_runs_and_none_without_deadlines():
    worker = _worker()
    worker._timer_wake = -math.inf                  # running: it recomputes before sleeping
    _arm(worker, 1.0)
    worker.kick_timers()
    assert not worker._timer_kick.is_set()
    idle = _worker()
    assert idle._next_deadline() == math.inf
    idle.kick_timers()
    assert not idle._timer_kick.is_set()


def test_a_bug_met_by_a_timer_costs_that_timer_not_the_loop():
    import trio

    from nodes.worker.services import Services

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

    async def main():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker._timer_loop)
            for round_ in (1, 2):
                with trio.fail_after(30):
                    while worker._timer_wake == -math.inf:  # until it sleeps again
                        await trio.sleep(0.01)
                    worker._timer_kick.set()
                    while fired.count("tu") < round_:
                        await trio.sleep(0.01)
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert fired == ["transactions", "tu", "transactions", "tu"], "the TU's timers still ran, and the loop went on"
    assert worker.stats["internal_error"] == 1
