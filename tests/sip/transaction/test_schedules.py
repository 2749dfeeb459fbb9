"""The exact timer schedules of RFC 3261 §17 / RFC 6026 with default T1, T2, T4."""

from __future__ import annotations

import pytest

from cluster.sip.transaction import (
    AckReceived, Send, TimerConfig, TransactionLayer, TransactionTerminated, TransactionTimeout,
)

from .messages import SERVER, SERVER_TCP, TCP, UDP, ack_for, request, response, run_timers


def retransmission_times(fired: list) -> list[float]:
    return [t for t, a in fired if isinstance(a, Send) and a.retransmission]


def termination_time(fired: list) -> float:
    (t,) = [t for t, a in fired if isinstance(a, TransactionTerminated)]
    return t


def test_timer_a_doubles_from_t1_until_timer_b():
    layer = TransactionLayer()
    key, _ = layer.send_request(request("INVITE"), SERVER, 0.0)
    fired = run_timers(layer, 100.0)
    # T1, +2·T1, +4·T1, ... : 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 — the next (63.5) is past B.
    assert retransmission_times(fired) == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert [(t, a.timer) for t, a in fired if isinstance(a, TransactionTimeout)] == [(32.0, "B")]
    assert termination_time(fired) == 32.0
    assert layer.state(key) is None


def test_timer_a_absent_on_tcp_but_timer_b_is_not():
    layer = TransactionLayer()
    layer.send_request(request("INVITE"), SERVER_TCP, 0.0)
    fired = run_timers(layer, 100.0)
    assert retransmission_times(fired) == []
    assert [(t, a.timer) for t, a in fired if isinstance(a, TransactionTimeout)] == [(32.0, "B")]


def test_timer_e_doubles_capped_at_t2_until_timer_f():
    layer = TransactionLayer()
    layer.send_request(request("OPTIONS"), SERVER, 0.0)
    fired = run_timers(layer, 100.0)
    assert retransmission_times(fired) == [
        0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5,
    ]
    assert [(t, a.timer) for t, a in fired if isinstance(a, TransactionTimeout)] == [(32.0, "F")]


def test_timer_e_repeats_every_t2_in_proceeding():
    layer = TransactionLayer()
    req = request("REGISTER")
    layer.send_request(req, SERVER, 0.0)
    run_timers(layer, 0.6)  # one retransmission at 0.5, next due at 1.5
    layer.receive(response(req, 100), SERVER, 0.7)
    fired = run_timers(layer, 100.0)
    # §17.1.2.2: the pending E keeps its deadline, then every T2.
    assert retransmission_times(fired) == [1.5, 5.5, 9.5, 13.5, 17.5, 21.5, 25.5, 29.5]
    assert [(t, a.timer) for t, a in fired if isinstance(a, TransactionTimeout)] == [(32.0, "F")]


def test_timer_g_doubles_capped_at_t2_until_timer_h():
    layer = TransactionLayer()
    req = request("INVITE")
    layer.receive(req, UDP, 0.0)
    layer.send_response(response(req, 486), 0.0)
    fired = run_timers(layer, 100.0)
    assert retransmission_times(fired) == [
        0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5,
    ]
    assert [(t, a.timer) for t, a in fired if isinstance(a, TransactionTimeout)] == [(32.0, "H")]
    assert termination_time(fired) == 32.0


def test_timer_h_is_64_t1_on_tcp_too():
    layer = TransactionLayer()
    req = request("INVITE", transport="TCP")
    layer.receive(req, TCP, 0.0)
    layer.send_response(response(req, 486), 0.0)
    fired = run_timers(layer, 100.0)
    assert retransmission_times(fired) == []
    assert [(t, a.timer) for t, a in fired if isinstance(a, TransactionTimeout)] == [(32.0, "H")]


@pytest.mark.parametrize("peer, expected", [(SERVER, 32.0), (SERVER_TCP, None)])
def test_timer_d_is_32s_on_udp_and_zero_on_tcp(peer, expected):
    layer = TransactionLayer()
    req = request("INVITE")
    key, _ = layer.send_request(req, peer, 0.0)
    actions = layer.receive(response(req, 404), peer, 1.0)
    if expected is None:
        assert isinstance(actions[-1], TransactionTerminated)
        assert layer.state(key) is None
    else:
        assert layer.state(key) == "Completed"
        assert termination_time(run_timers(layer, 100.0)) == 1.0 + expected


@pytest.mark.parametrize("source, expected", [(UDP, 5.0), (TCP, None)])
def test_timer_i_is_t4_on_udp_and_zero_on_tcp(source, expected):
    layer = TransactionLayer()
    req = request("INVITE", transport=source.transport)
    layer.receive(req, source, 0.0)
    final = response(req, 480)
    layer.send_response(final, 0.0)
    actions = layer.receive(ack_for(req, final), source, 2.0)
    if expected is None:
        assert actions == [TransactionTerminated(actions[0].key)]
    else:
        assert termination_time(run_timers(layer, 100.0)) == 2.0 + expected


@pytest.mark.parametrize("source, expected", [(UDP, 32.0), (TCP, None)])
def test_timer_j_is_64_t1_on_udp_and_zero_on_tcp(source, expected):
    layer = TransactionLayer()
    req = request("OPTIONS", transport=source.transport)
    layer.receive(req, source, 0.0)
    actions = layer.send_response(response(req, 200), 3.0)
    if expected is None:
        assert isinstance(actions[-1], TransactionTerminated)
    else:
        assert termination_time(run_timers(layer, 100.0)) == 3.0 + expected


@pytest.mark.parametrize("peer, expected", [(SERVER, 5.0), (SERVER_TCP, None)])
def test_timer_k_is_t4_on_udp_and_zero_on_tcp(peer, expected):
    layer = TransactionLayer()
    req = request("BYE")
    layer.send_request(req, peer, 0.0)
    actions = layer.receive(response(req, 200), peer, 4.0)
    if expected is None:
        assert isinstance(actions[-1], TransactionTerminated)
    else:
        assert termination_time(run_timers(layer, 100.0)) == 4.0 + expected


@pytest.mark.parametrize("source", [UDP, TCP])
def test_timer_l_is_64_t1(source):
    layer = TransactionLayer()
    req = request("INVITE", transport=source.transport)
    layer.receive(req, source, 0.0)
    layer.send_response(response(req, 200), 1.0)
    fired = run_timers(layer, 100.0)
    assert retransmission_times(fired) == []  # 2xx retransmission is the TU's job
    assert termination_time(fired) == 33.0


@pytest.mark.parametrize("peer", [SERVER, SERVER_TCP])
def test_timer_m_is_64_t1(peer):
    layer = TransactionLayer()
    req = request("INVITE")
    layer.send_request(req, peer, 0.0)
    layer.receive(response(req, 200), peer, 2.0)
    assert termination_time(run_timers(layer, 100.0)) == 34.0


def test_timers_follow_a_configured_t1():
    layer = TransactionLayer(TimerConfig(t1=0.1, t2=0.4))
    layer.send_request(request("OPTIONS"), SERVER, 0.0)
    fired = run_timers(layer, 100.0)
    assert retransmission_times(fired) == pytest.approx(
        [0.1, 0.3, 0.7, 1.1, 1.5, 1.9, 2.3, 2.7, 3.1, 3.5, 3.9, 4.3, 4.7, 5.1, 5.5, 5.9, 6.3]
    )
    assert [t for t, a in fired if isinstance(a, TransactionTimeout)] == pytest.approx([6.4])


def test_timer_c_bounds_a_ringing_invite_client_transaction():
    layer = TransactionLayer(TimerConfig(c=180.0))
    req = request("INVITE")
    key, _ = layer.send_request(req, SERVER, 0.0)
    layer.receive(response(req, 180), SERVER, 1.0)
    layer.receive(response(req, 180), SERVER, 61.0)  # a new 1xx resets C
    fired = run_timers(layer, 1000.0)
    assert [(t, a.timer) for t, a in fired if isinstance(a, TransactionTimeout)] == [(241.0, "C")]
    # §9.1: 64·T1 for the final response to the CANCEL the TU sends.
    assert termination_time(fired) == 273.0


def test_a_late_ack_is_not_matched_after_timer_i():
    layer = TransactionLayer()
    req = request("INVITE")
    layer.receive(req, UDP, 0.0)
    final = response(req, 486)
    layer.send_response(final, 0.0)
    layer.receive(ack_for(req, final), UDP, 1.0)
    run_timers(layer, 6.0)
    assert len(layer) == 0
    (event,) = layer.receive(ack_for(req, final), UDP, 7.0)
    assert isinstance(event, AckReceived) and event.key is None
