"""Timer values derived from T1/T2/T4 and the lazy-deletion timer queue."""

from __future__ import annotations

import pytest

from cluster.sip.transaction.timers import TimerConfig, TimerQueue


class Owner:
    __slots__ = ("_retransmit", "_timeout")

    def __init__(self) -> None:
        self._retransmit = None
        self._timeout = None


def test_defaults_are_rfc3261_table4():
    config = TimerConfig()
    assert (config.t1, config.t2, config.t4) == (0.5, 4.0, 5.0)
    udp = config.for_transport(reliable=False)
    assert (udp.a, udp.b, udp.d, udp.e, udp.f, udp.g, udp.h) == (0.5, 32.0, 32.0, 0.5, 32.0, 0.5, 32.0)
    assert (udp.i, udp.j, udp.k, udp.l, udp.m, udp.t2) == (5.0, 32.0, 5.0, 32.0, 32.0, 4.0)


def test_reliable_transports_have_no_retransmission_and_zero_linger():
    tcp = TimerConfig().for_transport(reliable=True)
    assert (tcp.a, tcp.e, tcp.g) == (None, None, None)
    assert (tcp.d, tcp.i, tcp.j, tcp.k) == (0.0, 0.0, 0.0, 0.0)
    assert (tcp.b, tcp.f, tcp.h, tcp.l, tcp.m) == (32.0,) * 5


def test_every_timer_follows_t1_t2_t4():
    config = TimerConfig(t1=0.1, t2=2.0, t4=3.0)
    udp = config.for_transport(reliable=False)
    assert udp.a == udp.e == udp.g == 0.1
    assert udp.b == udp.f == udp.h == udp.j == udp.l == udp.m == pytest.approx(6.4)
    assert udp.i == udp.k == 3.0
    assert udp.t2 == 2.0


@pytest.mark.parametrize("kwargs", [{"t1": 0}, {"t1": 5, "t2": 4}, {"t4": 0}, {"c": 0}, {"d": -1}])
def test_nonsense_configuration_is_refused(kwargs):
    with pytest.raises(ValueError):
        TimerConfig(**kwargs)


def test_queue_fires_in_deadline_order_and_skips_stopped_entries():
    queue = TimerQueue()
    a, b, c = Owner(), Owner(), Owner()
    a._timeout = queue.push(3.0, a, "B")
    b._retransmit = queue.push(1.0, b, "A")
    c._timeout = queue.push(2.0, c, "F")
    c._timeout = None  # stopped
    queue.abandon()
    assert len(queue) == 2
    assert queue.next_deadline() == 1.0
    assert [(o is b, n) for o, n in queue.expired(2.5)] == [(True, "A")]
    assert b._retransmit is None  # slot cleared before the handler runs
    assert queue.next_deadline() == 3.0
    assert [n for _, n in queue.expired(3.0)] == ["B"]
    assert queue.next_deadline() is None
    assert len(queue) == 0


def test_queue_compacts_when_stopped_entries_dominate():
    queue = TimerQueue()
    owners = [Owner() for _ in range(10_000)]
    for i, owner in enumerate(owners):
        owner._timeout = queue.push(float(i), owner, "J")
    for owner in owners[:9_000]:
        owner._timeout = None
        queue.abandon()
    assert len(queue._heap) < 10_000  # rebuilt without the stopped entries
    assert len(queue) == 1_000
    assert queue.next_deadline() == 9_000.0
