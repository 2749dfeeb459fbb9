"""Metrics: hot-path counters read at scrape time, exported through the
prometheus_client collector in Prometheus text, with the names the ops/ files use."""

from __future__ import annotations

import os
import socket

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cluster.observability.metrics import HistogramFamily, MetricsEndpoint, one
from cluster.observability.transactions import TransactionCounts, transaction_type
from cluster.sip import make_response
from cluster.sip.transaction import TransactionLayer
from nodes.edge.metrics import udp_socket_queue
from tests.sip.transaction.messages import SERVER, UDP, request, response


def samples(text: bytes) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_hot_histogram_buckets_are_prometheus_le_and_cumulative():
    endpoint = MetricsEndpoint(role="worker", node_id="w1")
    series = endpoint.histogram(HistogramFamily("sipcluster_test_seconds", "test", (0.001, 0.01))).series(hop="a")
    for ns in (500_000, 1_000_000, 1_000_001, 20_000_000):
        series.observe_ns(ns)
    got = samples(endpoint.render())
    bucket = lambda le: got[("sipcluster_test_seconds_bucket", (("hop", "a"), ("le", le)))]  # noqa: E731
    assert bucket("0.001") == 2  # 1 ms itself is "le 0.001"
    assert bucket("0.01") == 3
    assert bucket("+Inf") == 4
    assert got[("sipcluster_test_seconds_count", (("hop", "a"),))] == 4
    assert got[("sipcluster_test_seconds_sum", (("hop", "a"),))] == pytest.approx(0.022500001)


def test_observable_counters_and_gauges_are_read_at_scrape_time():
    endpoint = MetricsEndpoint(role="edge", node_id="e1")
    state = {"n": 1}
    endpoint.counter("sipcluster_test_total", "t", lambda: one(state["n"], kind="x"))
    endpoint.counter("sipcluster_unused_total", "t", lambda: [])
    endpoint.gauge("sipcluster_test_gauge", "t", lambda: one(7))
    assert samples(endpoint.render())[("sipcluster_test_total", (("kind", "x"),))] == 1
    state["n"] = 5
    got = samples(endpoint.render())
    assert got[("sipcluster_test_total", (("kind", "x"),))] == 5
    # A counter never bumped is exported at 0, so alerts see it from the start.
    assert got[("sipcluster_unused_total", ())] == 0
    assert got[("sipcluster_test_gauge", ())] == 7
    assert ("process_cpu_seconds_total", ()) in got
    assert {"sipcluster_test_total", "sipcluster_unused_total", "sipcluster_test_gauge"} <= endpoint.names()


def test_transaction_types_from_keys():
    assert transaction_type(("c", "z9hG4bK1", "INVITE")) == "client_invite"
    assert transaction_type(("c", "z9hG4bK1", "BYE")) == "client_non_invite"
    assert transaction_type(("s", "z9hG4bK1", "h", 5060, "INVITE")) == "server_invite"
    assert transaction_type(("2543", "cid", "tag", 1, "OPTIONS", "via")) == "server_non_invite"


def test_server_outcome_counted_once_at_the_first_final_response():
    counts = TransactionCounts()
    layer = TransactionLayer(observer=counts)
    options = request("OPTIONS", uri="sip:example.com")
    layer.receive(options, UDP, 0.0)
    layer.send_response(response(options, 200), 0.01)
    layer.receive(options, UDP, 0.5)  # retransmission: the 200 again, not counted
    assert counts.started == {"server_non_invite": 1}
    assert counts.outcomes == {("server_non_invite", "2xx"): 1}
    assert layer.counters.retransmissions_absorbed == 1


def test_call_answered_then_dialog_ended_by_bye():
    counts = TransactionCounts()
    layer = TransactionLayer(observer=counts)
    invite = request("INVITE", call_id="call-a")
    layer.receive(invite, UDP, 0.0)
    assert counts.calls_started == 1
    layer.send_response(response(invite, 180), 0.1)
    layer.send_response(response(invite, 200), 0.2)
    assert counts.calls_answered == 1 and counts.active_dialogs(0.3) == 1
    assert counts.outcomes == {("server_invite", "2xx"): 1}
    bye = request("BYE", branch="z9hG4bKbye1", to_tag="tt1", call_id="call-a", seq=2)
    layer.receive(bye, UDP, 5.0)
    assert counts.calls_started == 1  # in-dialog: not a new call
    layer.send_response(response(bye, 200), 5.1)
    assert counts.active_dialogs(5.2) == 0


def test_failed_call_by_code_and_reinvite_is_not_a_call():
    counts = TransactionCounts()
    layer = TransactionLayer(observer=counts)
    invite = request("INVITE", call_id="call-b")
    layer.receive(invite, UDP, 0.0)
    layer.send_response(response(invite, 486), 0.1)
    assert counts.calls_failed == {486: 1} and counts.calls_answered == 0
    reinvite = request("INVITE", branch="z9hG4bKre1", to_tag="x", call_id="call-c", seq=3)
    layer.receive(reinvite, UDP, 1.0)
    layer.send_response(response(reinvite, 200), 1.1)
    assert counts.calls_started == 1 and counts.calls_answered == 0


def test_client_timeout_and_response_outcomes():
    counts = TransactionCounts()
    layer = TransactionLayer(observer=counts)
    options = request("OPTIONS", branch="z9hG4bKout1", uri="sip:far@example.net")
    key, _ = layer.send_request(options, SERVER, 0.0)
    assert counts.started == {"client_non_invite": 1}
    layer.handle_timer(64.0)  # Timer F
    assert counts.outcomes == {("client_non_invite", "timeout"): 1}
    assert counts.timeouts["F"] == 1
    invite = request("INVITE", branch="z9hG4bKout2")
    key, _ = layer.send_request(invite, SERVER, 100.0)
    ok = make_response(invite, 200, to_tag="t9")
    layer.receive(ok, SERVER, 100.1)
    layer.receive(ok, SERVER, 100.6)  # a retransmitted 2xx (RFC 6026 §7.2) counts once
    assert counts.outcomes[("client_invite", "2xx")] == 1


def test_dialog_entries_expire():
    counts = TransactionCounts()
    layer = TransactionLayer(observer=counts)
    invite = request("INVITE", call_id="call-d")
    layer.receive(invite, UDP, 0.0)
    layer.send_response(response(invite, 200), 0.1)
    assert counts.active_dialogs(10.0) == 1
    assert counts.active_dialogs(5 * 3600.0) == 0


@pytest.mark.skipif(not os.path.exists("/proc/net/udp"), reason="Linux /proc")
def test_udp_receive_queue_read_from_proc():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        rx.bind(("127.0.0.1", 0))
        inode = os.fstat(rx.fileno()).st_ino
        assert udp_socket_queue(inode, False) == (0, 0)
        for _ in range(3):
            tx.sendto(b"x" * 100, rx.getsockname())
        queued, drops = udp_socket_queue(inode, False)
        assert queued >= 300 and drops == 0
    assert udp_socket_queue(inode, False) is None


def test_a_reading_that_fails_costs_its_family_not_the_scrape(caplog):
    endpoint = MetricsEndpoint(role="worker", node_id="w1")

    def broken():
        raise RuntimeError("a bug in a reading")
    endpoint.gauge("sipcluster_broken", "t", broken)
    endpoint.counter("sipcluster_fine_total", "t", lambda: one(2))
    got = samples(endpoint.render())
    assert got[("sipcluster_fine_total", ())] == 2
    assert not any(name == "sipcluster_broken" for name, _ in got)
    assert "sipcluster_broken could not be read" in caplog.text


def test_the_endpoint_is_a_prometheus_client_collector():
    from prometheus_client.registry import Collector
    endpoint = MetricsEndpoint(role="edge", node_id="e1")
    assert Collector in type(endpoint).__mro__
    assert {family.name for family in endpoint.collect()} >= {"sipcluster_node_info", "target_info"}
