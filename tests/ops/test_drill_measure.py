"""The drills' measurement and reporting (ops/drills/measure.py, report.py):
figures computed from what the SIPp agents log, the table's PASS/FAIL per
target, the picture; the Kamailio configuration and nftables rulesets the
drills load are checked by the real tools."""

from __future__ import annotations

import subprocess

import pytest

import tomllib

from ops.drills.cluster import CLUSTER_NAME, DNS_TTL, DOMAIN, LOSS_DNS_TTL, dnsmasq_config, kamailio_config, node_config
from ops.drills.faults import (DRILLS, NEW_ONLY_FIRST_SECOND, NO_DUPLICATES, NO_ESTABLISHED_LOST, etcd_cut_ruleset,
                               loss_ruleset)
from ops.drills.measure import CallRecord, abort_times, failure_kinds, failures_by_phase, parse_call_log, parse_register_log, series, summarize
from ops.drills.report import plot, table

LOG = """\
S 0 a@x
A 100 a@x
R 5100 a@x
E 10100 a@x
S 1000 b@x
A 1100 b@x
S 6000 c@x
garbage line
S 6200 d@x
A 6300 d@x
R 11300 d@x
E 16300 d@x
"""


def test_call_log_parses_into_records_with_wall_times():
    calls = {c.call_id: c for c in parse_call_log(LOG, origin=1000.0)}
    assert calls["a@x"] == CallRecord("a@x", 1000.0, 1000.1, 1005.1, 1010.1)
    assert calls["b@x"] == CallRecord("b@x", 1001.0, 1001.1, None, None)
    assert calls["c@x"] == CallRecord("c@x", 1006.0)
    assert len(calls) == 4


def test_register_log_lists_tried_and_answered_users():
    text = "T 1 u1\nG 5 u1\nT 9 u2\n"
    assert parse_register_log(text) == ["u1"]
    assert parse_register_log(text, "T") == ["u1", "u2"]


def test_summary_separates_established_lost_from_new_calls_failed():
    calls = parse_call_log(LOG, origin=0.0)
    # Fault at 6.0 s, hold 10 s: b (answered at 1.1) lost its re-INVITE at
    # 6.1 s; c never got an answer (started at the fault).
    outcome = summarize(calls, fault_at=6.0, hold=10.0, registered=["u1", "u2"], bound=["u1"],
                        refreshes=10, refreshed=7, failures_seen={"stray 200": 2, "500": 3},
                        stuck_calls=1)
    assert outcome.calls == 4
    assert outcome.established_at_fault == 2          # a and b
    assert outcome.established_lost == 1
    assert outcome.new_failed == 1
    assert outcome.new_failed_late == 0               # c started within the first second
    assert outcome.registrations == 2 and outcome.registrations_lost == 1
    assert outcome.refreshes_failed == 3
    assert outcome.stray_messages == 2 and outcome.stuck_calls == 1
    assert outcome.time_to_recover == pytest.approx(0.1)   # b's re-INVITE at 6.1 s
    assert outcome.completed_ratio_after_fault == pytest.approx(0.5)  # c failed, d completed
    assert outcome.failed == 2


def test_a_new_call_failing_later_than_a_second_after_the_fault_counts_as_late():
    calls = [CallRecord("x", 10.0), CallRecord("y", 12.5), CallRecord("w", 9.5)]
    outcome = summarize(calls, fault_at=10.0, hold=10.0)
    assert outcome.new_failed == 3 and outcome.new_failed_late == 1
    assert not NEW_ONLY_FIRST_SECOND.check(outcome)
    assert outcome.time_to_recover == pytest.approx(2.5)


ERRORS = """The following events occurred:
2026-12-07\t21:17:49.66\t1.0: Aborting call on unexpected message for Call-Id '1-2@x': while expecting '200' (index 13), received 'SIP/2.0 500 Service Unavailable
Via: SIP/2.0/UDP 10.225.33.50:5060;branch=z9hG4bK-27797-100-12

'2026-12-07\t21:17:49.68\t1.1: Aborting call on unexpected message for Call-Id '2-2@x': while expecting 'ACK' (index 3), received 'SIP/2.0 200 OK
CSeq: 1 INVITE

'2026-12-07\t21:17:49.69\t1.2: Aborting call on unexpected message for Call-Id '3-2@x': while expecting 'BYE' (index 3), received 'INVITE sip:a@b SIP/2.0

'2026-12-07\t21:17:58.71\t1.3: Aborting call on UDP retransmission timeout for Call-ID '4-2@x'
2026-12-07\t21:17:58.72\t1.4: Dead call 2-2@x (aborted at index 6), received 'SIP/2.0 200 OK
"""


def test_failure_kinds_tell_duplicates_from_failures():
    kinds = failure_kinds(ERRORS)
    assert kinds == {"500": 1, "stray 200": 1, "stray request": 1, "timeout": 1}
    assert failure_kinds(ERRORS, since=1.15) == {"stray request": 1, "timeout": 1}
    outcome = summarize([], fault_at=0.0, hold=1.0, failures_seen=kinds)
    assert outcome.stray_messages == 2
    assert not NO_DUPLICATES.check(outcome)


def test_calls_that_failed_before_the_fault_are_not_counted_against_it():
    calls = [CallRecord("early-new", 5.0), CallRecord("early-lost", 1.0, 1.1),   # re-INVITE at 6.1 s
             CallRecord("in-flight", 9.5), CallRecord("lost", 8.0, 8.1), CallRecord("ok", 8.0, 8.1, 13.1, 18.1)]
    outcome = summarize(calls, fault_at=10.0, hold=10.0)
    assert outcome.failed_before_fault == 2
    assert outcome.established_lost == 1 and outcome.new_failed == 1
    assert NO_ESTABLISHED_LOST.check(summarize(calls[:3], fault_at=10.0, hold=10.0))


def test_a_call_aborted_on_a_stray_answer_fails_when_it_was_aborted():
    aborted = abort_times(ERRORS)
    assert aborted == {"1-2@x": 1.0, "2-2@x": 1.1, "3-2@x": 1.2, "4-2@x": 1.3}
    # Answered at 0.5 s, aborted at 1.1 s on a late answer: before a fault at
    # 5 s, though its re-INVITE would only have gone out at 5.5 s.
    calls = parse_call_log("S 0 2-2@x\nA 500 2-2@x\n", origin=0.0, aborted=aborted)
    assert calls[0].aborted == 1.1
    outcome = summarize(calls, fault_at=5.0, hold=10.0)
    assert outcome.failed_before_fault == 1 and outcome.established_lost == 0


def test_failures_are_attributed_to_the_fault_step_before_them():
    calls = [CallRecord("x", 9.0), CallRecord("y", 12.5), CallRecord("z", 20.0), CallRecord("ok", 13.0, 13.1, 14, 15)]
    phases = failures_by_phase(calls, [(12.0, "SIGTERM w1"), (18.0, "start w1")], fault_at=10.0, hold=4.0)
    assert phases == {"before the fault": 1, "SIGTERM w1": 1, "start w1": 1}


def test_series_counts_per_second():
    calls = parse_call_log(LOG, origin=0.0)
    data = series(calls, hold=10.0, origin=0.0)
    assert data.started[:7] == [1, 1, 0, 0, 0, 0, 2]
    # b's lost re-INVITE (6.1 s) and c's INVITE (6.0 s) fail in second 6.
    assert data.failures[6] == 2 and sum(data.failures) == 2
    assert data.established[3] == 2    # a and b held
    assert data.established[12] == 1   # d only


def test_table_says_pass_or_fail_per_target(tmp_path):
    calls = parse_call_log(LOG, origin=0.0)
    outcome = summarize(calls, fault_at=6.0, hold=10.0)
    text = table("worker-kill", "kill -9 of worker w1", outcome, (NO_ESTABLISHED_LOST, NEW_ONLY_FIRST_SECOND))
    assert "| 0 established calls lost | FAIL | 1 lost of 2 |" in text
    assert "| new calls failed only within the first second after the fault | PASS |" in text
    assert "| 4 | 0 | 2 | 1 | 1 | 0 of 0 | 0 | 0.1 s |" in text
    assert "Why the caller and callee aborted calls from the fault on: none." in text
    picture = plot(tmp_path / "drill.png", "worker-kill", series(calls, hold=10.0), 6.0, 16.0)
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_drill_of_the_issue_exists_with_targets():
    assert {"worker-kill", "edge-kill", "etcd-kill", "worker-stop", "worker-etcd-cut", "sip-loss",
            "rolling-upgrade"} <= set(DRILLS)
    assert all(drill.targets for drill in DRILLS.values())


def test_each_drill_checks_the_issues_targets_in_its_words():
    # Issue 18 §5, per fault (worker-etcd-cut: §7, the split-brain case).
    worker_loss = ["0 established calls lost", "new calls failed only within the first second after the fault"]
    expected = {
        "worker-kill": worker_loss,
        "worker-link-down": worker_loss,
        "edge-kill": ["in-dialog requests of established calls reach a surviving edge within Timer F (32 s) "
                      "via the peer's failover", "0 registrations lost"],
        "etcd-kill": ["no failed calls"],
        "worker-stop": ["no duplicate processing", "no stuck calls"],
        "worker-etcd-cut": ["0 established calls lost", "no duplicate processing"],
        "sip-loss": [">= 99 % of calls complete through retransmission"],
        "rolling-upgrade": ["0 failed calls"],
    }
    assert {name: [t.name for t in drill.targets] for name, drill in DRILLS.items()} == expected
    # Edge loss is judged on the calls established at the fault only.
    edge = DRILLS["edge-kill"].targets[0]
    answered_after = summarize([CallRecord("late", 12.0, 12.1)], fault_at=10.0, hold=10.0)
    assert edge.check(answered_after) and answered_after.new_failed == 1


@pytest.mark.parametrize("ruleset", [loss_ruleset("drilltest", 20),
                                     etcd_cut_ruleset("drilltest", ["10.1.2.3", "10.1.2.4"])])
def test_nftables_accepts_the_fault_rulesets(ruleset):
    # -c: parse and check only, nothing is loaded.
    result = subprocess.run(["nft", "-c", "-f", "-"], input=ruleset, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_kamailio_accepts_the_carrier_configuration(tmp_path):
    cfg = tmp_path / "kamailio.cfg"
    cfg.write_text(kamailio_config("127.0.0.1", port=5999))
    result = subprocess.run(["kamailio", "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("ttl", [DNS_TTL, LOSS_DNS_TTL])
def test_the_drill_dns_serves_every_edge_with_the_drills_ttl(tmp_path, ttl):
    """dnsmasq on loopback with the drill's configuration: the SRV name lists
    both edges, the name itself has A records, and every answer carries the
    TTL asked for (see cluster.DNS_TTL for why it differs per drill)."""
    import dns.exception
    import dns.message
    import dns.query

    from tests.e2e.harness import free_port_pair, wait_for

    port = free_port_pair()
    conf = tmp_path / "dnsmasq.conf"
    conf.write_text(dnsmasq_config("127.0.0.1", {"edge1": "127.0.0.21", "edge2": "127.0.0.22"}, ttl=ttl))
    proc = subprocess.Popen(["dnsmasq", "-k", "-C", str(conf), f"--port={port}", "--pid-file=",
                             "--log-facility=-"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def ask(name: str, kind: str):
        try:
            return dns.query.udp(dns.message.make_query(name, kind), "127.0.0.1", port=port, timeout=1)
        except (OSError, dns.exception.Timeout):
            return None

    try:
        srv = wait_for(lambda: ask(f"_sip._udp.{CLUSTER_NAME}", "SRV"), timeout=30, what="dnsmasq answering")
        assert sorted(str(r.target) for r in srv.answer[0]) == [f"edge1.{DOMAIN}.", f"edge2.{DOMAIN}."]
        a = ask(CLUSTER_NAME, "A")
        assert a is not None and sorted(r.address for r in a.answer[0]) == ["127.0.0.21", "127.0.0.22"]
        edge = ask(f"edge1.{DOMAIN}", "A")
        assert edge is not None
        assert {rrset.ttl for reply in (srv, a, edge) for rrset in reply.answer} == {ttl}
    finally:
        proc.kill()
        proc.wait()


def test_only_the_loss_drill_has_long_dns_records_and_the_lossy_callee():
    # Under loss a 1 s TTL made Kamailio's failovers end in 478; the other
    # drills keep what their figures were measured with.
    assert LOSS_DNS_TTL > 600 and DNS_TTL <= 1
    assert {name for name, drill in DRILLS.items() if drill.dns_ttl == LOSS_DNS_TTL} == {"sip-loss"}
    assert all(drill.dns_ttl == DNS_TTL for name, drill in DRILLS.items() if name != "sip-loss")
    assert {name for name, drill in DRILLS.items() if drill.lossy_callee} == {"sip-loss"}


def test_node_config_puts_settings_into_their_section_and_refuses_others():
    text = node_config("w1", "10.9.8.31", ["http://10.9.8.10:2379"], lease_ttl=3, secret="s" * 20,
                       settings=['cluster.record_route = "cluster.drill.test"', "worker.t1 = 0.25"])
    config = tomllib.loads(text)
    assert config["cluster"]["record_route"] == "cluster.drill.test"
    assert config["worker"]["t1"] == 0.25 and config["worker"]["trusted"] == ["10.9.8.0/24"]
    assert config["edge"]["listen"] == ["udp:10.9.8.31:5060"]
    for bad in ("record_route = 1", "nosuch.key = 1", "cluster.lease_ttl"):
        with pytest.raises(ValueError, match="section.key = value"):
            node_config("w1", "10.9.8.31", [], lease_ttl=3, secret="s", settings=[bad])


# A caller's log around a fault at 10 s (hold 10 s: re-INVITE 5 s after the
# answer, BYE 5 s after that), with the SIPp error log of the calls it aborted.
AROUND_FAULT = """\
S 1000 before@x
A 1200 before@x
S 9000 answered-late@x
A 10400 answered-late@x
S 10500 in-first-second@x
S 12000 late-invite@x
A 12100 late-invite@x
S 12000 late-ok@x
A 12100 late-ok@x
R 17100 late-ok@x
E 22100 late-ok@x
S 14000 never-answered@x
"""
AROUND_FAULT_ERRORS = (
    "2026-12-07\t21:17:49.66\t17.2: Aborting call on unexpected message for Call-Id 'late-invite@x': "
    "while expecting 'BYE' (index 3), received 'INVITE sip:a@b SIP/2.0\n\n'"
)


def test_only_calls_answered_before_the_fault_count_as_established_calls_lost():
    calls = parse_call_log(AROUND_FAULT, origin=0.0, aborted=abort_times(AROUND_FAULT_ERRORS))
    outcome = summarize(calls, fault_at=10.0, hold=10.0)
    # "before" was answered before the fault, but its re-INVITE (6.2 s) went
    # out and failed before it: not the fault's, and no longer established
    # when it came. Answered before the fault and failing after it is the
    # only way to be an established call lost.
    assert outcome.failed_before_fault == 1
    assert outcome.established_at_fault == 0 and outcome.established_lost == 0
    # answered-late (INVITE before the fault, 200 after it, re-INVITE lost at
    # 15.4 s), in-first-second, late-invite (answered at 12.1 s, aborted at
    # 17.2 s on a stray request) and never-answered are new calls.
    assert outcome.new_failed == 4
    # Only in-first-second failed within the first second after the fault.
    assert outcome.new_failed_late == 3
    assert NO_ESTABLISHED_LOST.check(outcome) and not NEW_ONLY_FIRST_SECOND.check(outcome)


def test_a_call_established_at_the_fault_that_fails_after_it_is_lost_not_new():
    log = "S 1000 held@x\nA 1200 held@x\nR 6200 held@x\nS 1000 ok@x\nA 1200 ok@x\nR 6200 ok@x\nE 11200 ok@x\n"
    outcome = summarize(parse_call_log(log, origin=0.0), fault_at=10.0, hold=10.0)
    # held's BYE went out at 11.2 s, after the fault: an established call lost.
    assert outcome.established_at_fault == 2
    assert (outcome.established_lost, outcome.new_failed, outcome.failed_before_fault) == (1, 0, 0)
    assert not NO_ESTABLISHED_LOST.check(outcome)


CONTINUED = (
    "2026-12-08\t00:27:12.21\t5.0: Continuing call on unexpected message for Call-Id '1-2@x': while sending "
    "(index 4), received 'ACK sip:10.0.0.60:5060;transport=UDP SIP/2.0\n\n'"
    "2026-12-08\t00:27:12.31\t6.0: Continuing call on unexpected message for Call-Id '2-2@x': while expecting "
    "'BYE' (index 6), received 'INVITE sip:a@b SIP/2.0\n\n'"
)


def test_a_callee_that_continues_on_unexpected_messages_still_shows_duplicates():
    # The lossy callee runs with -default_behaviors all,-abortunexp: a late ACK (the
    # caller acknowledges every copy of a 200) is no stray; a second INVITE is.
    assert failure_kinds(CONTINUED) == {"stray request": 1}
    assert failure_kinds(CONTINUED, since=5.5) == {"stray request": 1}
    assert failure_kinds(CONTINUED, since=6.5) == {}
    assert abort_times(CONTINUED) == {}
