"""The health state machine and probe schedule, on a hand-advanced clock."""

from __future__ import annotations

from cluster.dispatch import HealthPolicy, ProbeSchedule, decode_health, encode_health
from cluster.dispatch.model import HealthRecord, health_key, parse_health_key

GW = ("carriers", "sip:gw1.example.net:5060")
POLICY = HealthPolicy(interval=10.0, timeout=4.0, down_after=3, up_after=2, alive=frozenset({200, 404}))


def probe_once(schedule: ProbeSchedule, now: float, status: int | None):
    ((member, probe),) = schedule.due(now)
    assert member == GW
    if status is None:
        assert schedule.next_deadline() == now + POLICY.timeout
        return schedule.expire(now + POLICY.timeout)
    result = schedule.result(member, probe, status, now + 0.1)
    return [] if result is None else [result]


def test_probes_go_out_every_interval_and_never_two_at_once():
    schedule = ProbeSchedule(POLICY)
    schedule.assign([(GW, True)], 100.0)
    assert schedule.next_deadline() == 100.0
    ((member, probe),) = schedule.due(100.0)
    assert schedule.due(100.0) == [] and schedule.due(103.9) == []
    assert schedule.next_deadline() == 104.0, "the outstanding probe's timeout"
    assert schedule.result(member, probe, 200, 101.0) is None
    assert schedule.next_deadline() == 110.0
    assert schedule.due(109.9) == []
    assert len(schedule.due(110.0)) == 1


def test_down_after_three_failures_and_up_after_two_good_probes():
    schedule = ProbeSchedule(POLICY)
    schedule.assign([(GW, True)], 0.0)
    now = 0.0
    assert probe_once(schedule, now, 503) == []
    now += 10
    assert probe_once(schedule, now, None) == [], "two failures: still up"
    now += 10
    (down,) = probe_once(schedule, now, 500)
    assert (down.member, down.up, down.status) == (GW, False, 500)
    now += 10
    assert probe_once(schedule, now, 200) == []
    now += 10
    (back,) = probe_once(schedule, now, 404)
    assert back.up and back.status == 404, "404 is configured as alive here"


def test_a_timeout_never_counts_as_alive_and_a_late_answer_is_ignored():
    schedule = ProbeSchedule(HealthPolicy(interval=10.0, timeout=4.0, down_after=1, up_after=1))
    schedule.assign([(GW, True)], 0.0)
    ((member, probe),) = schedule.due(0.0)
    (down,) = schedule.expire(4.0)
    assert not down.up and down.status is None
    assert schedule.result(member, probe, 200, 5.0) is None, "answered after it was counted as a timeout"
    assert not schedule.health[GW].up


def test_only_configured_codes_are_alive():
    schedule = ProbeSchedule(HealthPolicy(down_after=1, alive=frozenset({200})))
    schedule.assign([(GW, True)], 0.0)
    ((member, probe),) = schedule.due(0.0)
    (down,) = [schedule.result(member, probe, 404, 0.5)]
    assert down is not None and not down.up


def test_a_member_taken_over_starts_from_the_state_etcd_holds_and_unassigned_ones_go():
    schedule = ProbeSchedule(POLICY)
    schedule.assign([(GW, False)], 0.0)
    assert not schedule.health[GW].up
    ((member, probe),) = schedule.due(0.0)
    schedule.assign([], 1.0)
    assert schedule.result(member, probe, 200, 1.0) is None
    assert schedule.next_deadline() is None


def test_health_records_and_keys_round_trip():
    record = HealthRecord(False, None, 12.5, "worker-1")
    assert decode_health(encode_health(record)) == record
    assert decode_health(b"[]") is None and decode_health(b"\xff") is None
    key = health_key("/sipcluster", *GW)
    assert "/" not in key.rsplit("/", 1)[1]
    assert parse_health_key("/sipcluster", key) == GW
    assert parse_health_key("/sipcluster", "/sipcluster/dispatcher/health/x") is None
