"""Observability end to end (DESIGN §9): `sipcluster up` exporting OTLP to a
test receiver, Prometheus scrapes of every node, readiness across an etcd
outage, SIP message logging switched on without a restart."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cluster.observability.otlp_sink import OtlpSink
from cluster.observability.tracing import trace_id_for
from tests.e2e.harness import ROOT, SCENARIOS, UpCluster, free_port_pair, options, wait_for
from tests.observability.test_ops_queries import alert_queries, dashboard_queries, referenced

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def sink():
    with OtlpSink() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def cluster(etcd_server, sink, tmp_path_factory):
    up = UpCluster(tmp_path_factory.mktemp("obs"), workers=2, etcd=etcd_server.endpoint, env={
        "OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint,
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        # SIPp answers digest challenges with MD5 only.
        "SIPCLUSTER_WORKER_DIGEST_ALGORITHMS": "MD5",
    }).start()
    wait_for(lambda: len(up.worker_pids()) == 2, what="two workers in the ring")
    yield up
    up.stop()


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return 0, b""


def scrape(cluster: UpCluster) -> dict[tuple[str, tuple], float]:
    """Every sample of every node, summed over nodes (labels without the node)."""
    total: dict[tuple[str, tuple], float] = {}
    for member in cluster.status()["members"]:
        status, body = get(member["metrics"])
        assert status == 200, member
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                total[key] = total.get(key, 0.0) + sample.value
    return total


def value(samples, name: str, **labels) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def test_status_json_lists_each_nodes_http_and_metrics_endpoint(cluster):
    members = cluster.status()["members"]
    assert {m["role"] for m in members} == {"edge", "worker"}
    for member in members:
        assert member["http"].startswith("http://127.0.0.1:")
        assert member["metrics"] == member["http"] + "/metrics"
        assert member["ready"] is True
        status, body = get(member["metrics"])
        assert status == 200 and b"sipcluster_node_ready 1.0" in body
        assert get(member["http"] + "/healthz")[0] == 200


def test_one_call_is_one_trace_across_edge_and_worker(cluster, sink, tmp_path):
    assert shutil.which("sipp"), "SIPp must be installed (sip-tester)"
    uas_port, uac_port = free_port_pair(), free_port_pair()
    call_id = f"trace-{uuid.uuid4().hex[:10]}@127.0.0.1"
    uas = subprocess.Popen(
        ["sipp", "-sf", str(SCENARIOS / "uas.xml"), "-i", "127.0.0.1", "-p", str(uas_port), "-m", "1",
         "-nostdin", "-timeout", "30s", "-timeout_error"], cwd=tmp_path,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        uac = subprocess.run(
            ["sipp", f"127.0.0.1:{cluster.port}", "-sf", str(SCENARIOS / "uac.xml"), "-s", "callee", "-d", "200",
             "-m", "1", "-i", "127.0.0.1", "-p", str(uac_port), "-cid_str", call_id,
             "-key", "domain", f"127.0.0.1:{uas_port}", "-key", "caller", "caller",
             "-key", "caller_domain", "bench.invalid", "-nostdin", "-timeout", "30s", "-timeout_error"],
            cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert uac.returncode == 0, uac.stdout[-2000:] + cluster.logs()
        assert uas.wait(30) == 0
    finally:
        if uas.poll() is None:
            uas.kill()
    trace_id = f"{trace_id_for(call_id):032x}"

    def complete(spans):
        mine = [s for s in spans if s.trace_id == trace_id]
        sends = [s for s in mine if s.name.startswith("edge.send")]
        # INVITE, 100, 180, 200, ACK, BYE, 200 BYE leave through the edge.
        return mine if len(sends) >= 7 and any(s.name == "worker.transaction 200 BYE" for s in mine) else None

    spans = sink.wait_for(complete, timeout=30)
    by_id = {s.span_id: s for s in spans}
    # Every span of the call is in the one trace, from both kinds of process.
    assert {s.service for s in spans} == {"sipcluster-edge", "sipcluster-worker"}
    assert all(s.trace_id == trace_id for s in spans)
    roots = [s for s in spans if not s.parent_span_id]
    assert roots and all(s.name.startswith(("edge.receive", "worker.send")) for s in roots)
    for span in spans:
        if span.parent_span_id:
            assert span.parent_span_id in by_id, span  # no dangling parent
    shards = set()
    for span in spans:
        parent = by_id.get(span.parent_span_id)
        if span.name.startswith("worker.transaction"):
            assert parent is not None and parent.name.startswith("edge.receive") and parent.service == "sipcluster-edge"
            assert span.service == "sipcluster-worker" and span.node == span.attributes["sip.shard"]
            shards.add(span.attributes["sip.shard"])
        if span.name.startswith("edge.send"):
            assert parent is not None and parent.service == "sipcluster-worker"
        if span.name.startswith("sip.route"):
            assert parent.name.startswith("worker.transaction")
            assert span.attributes["sip.app.handler"] == "cluster.app.default.route"
    assert len(shards) == 1, shards  # the whole call on its owner shard
    receive_invite = [s for s in spans if s.name == "edge.receive INVITE"][0]
    attrs = receive_invite.attributes
    assert attrs["sip.call_id"] == call_id and attrs["sip.request.method"] == "INVITE"
    assert attrs["sip.request.uri"] == f"sip:callee@127.0.0.1:{uas_port}"
    assert attrs["sip.cseq"] == 1 and attrs["network.transport"] == "udp"
    assert attrs["network.peer.address"] == "127.0.0.1" and attrs["sip.shard"] in shards
    assert attrs["sip.node"] == "edge-1"
    worker_ok = [s for s in spans if s.name == "worker.transaction 200 INVITE"][0]
    assert worker_ok.attributes["sip.response.status_code"] == 200
    assert worker_ok.attributes["sip.request.method"] == "INVITE"
    names = {s.name for s in spans}
    assert {"edge.receive ACK", "edge.receive BYE", "edge.send 180 INVITE", "edge.send 200 BYE"} <= names
    assert any(n.startswith("edge.send INVITE") for n in names)  # forwarded to the callee


def test_register_trace_has_registrar_and_etcd_spans(cluster, sink, etcd_server, tmp_path):
    added = cluster.cli("user", "add", "tracy@localhost", "--password-stdin", "--etcd", etcd_server.endpoint,
                        input="s3cret-pass\n")
    assert added.returncode == 0, added.stderr
    call_id = f"reg-{uuid.uuid4().hex[:10]}@127.0.0.1"
    result = subprocess.run(
        ["sipp", f"127.0.0.1:{cluster.port}", "-sf", str(SCENARIOS / "register.xml"), "-m", "1",
         "-i", "127.0.0.1", "-p", str(free_port_pair()), "-cid_str", call_id,
         "-key", "user", "tracy", "-key", "domain", "localhost", "-key", "expires", "600",
         "-key", "contact_host", "127.0.0.1", "-key", "contact_port", "5999",
         "-au", "tracy", "-ap", "s3cret-pass", "-nostdin", "-timeout", "30s", "-timeout_error"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout[-2000:] + cluster.logs()
    trace_id = f"{trace_id_for(call_id):032x}"

    def complete(spans):
        mine = [s for s in spans if s.trace_id == trace_id]
        names = {s.name for s in mine}
        return mine if {"edge.send 401 REGISTER", "edge.send 200 REGISTER", "etcd location.apply"} <= names \
            else None

    spans = sink.wait_for(complete, timeout=30)
    by_id = {s.span_id: s for s in spans}
    (register,) = [s for s in spans if s.name == "registrar.register"]
    assert by_id[register.parent_span_id].name == "worker.transaction REGISTER"
    assert register.attributes["sip.response.status_code"] == 200
    assert register.attributes["sip.aor"] == "sip:tracy@localhost"
    for name in ("etcd location.read", "etcd location.apply"):
        (span,) = [s for s in spans if s.name == name]
        assert span.parent_span_id == register.span_id and span.kind == "CLIENT"
        assert span.attributes["db.system"] == "etcd"
    (ok,) = [s for s in spans if s.name == "edge.send 200 REGISTER"]
    assert ok.parent_span_id == register.span_id  # the answer leaves from the registrar's span
    routes = [s for s in spans if s.name == "sip.route register"]
    assert len(routes) == 2 and {r.attributes["sip.route.decision"] for r in routes} == {"challenge", "register"}


def test_prometheus_counters_match_a_sipp_run(cluster, tmp_path):
    calls = 200
    before = scrape(cluster)
    stat = tmp_path / "stat.csv"
    result = subprocess.run(
        ["sipp", f"127.0.0.1:{cluster.port}", "-sf", str(SCENARIOS / "options_uac.xml"), "-m", str(calls),
         "-r", "200", "-l", "50", "-i", "127.0.0.1", "-p", str(free_port_pair()), "-nostdin",
         "-timeout", "60s", "-timeout_error", "-trace_stat", "-stf", str(stat)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:]
    rows = list(csv.reader(stat.open(), delimiter=";"))
    header, last = rows[0], rows[-1]
    ok = int(last[header.index("SuccessfulCall(C)")])
    retransmitted = int(last[header.index("Retransmissions(C)")])
    assert ok == calls

    def settled():
        after = scrape(cluster)
        delta = lambda name, **labels: value(after, name, **labels) - value(before, name, **labels)  # noqa: E731
        got = {
            "transactions": delta("sipcluster_transactions_total", type="server_non_invite", outcome="2xx"),
            "options_in": delta("sipcluster_sip_requests_total", direction="in", method="OPTIONS"),
            "ok_out": delta("sipcluster_sip_responses_total", direction="out", code="200"),
            "received": delta("sipcluster_edge_received_total", transport="udp"),
            "forwarded": delta("sipcluster_edge_forwarded_total"),
            "sent": delta("sipcluster_edge_sent_total", transport="udp"),
            "turnaround": delta("sipcluster_hop_latency_seconds_count", hop="edge_worker_edge"),
            "link": delta("sipcluster_hop_latency_seconds_count", hop="edge_to_worker"),
        }
        return got if got["transactions"] >= calls and got["sent"] >= calls else None

    got = wait_for(settled, timeout=20, what="metrics to catch up with SIPp")
    # One server transaction answered 2xx per SIPp call; every request SIPp
    # sent (retransmissions included) was received, forwarded and answered.
    assert got["transactions"] == calls
    assert got["options_in"] == calls + retransmitted
    assert got["received"] == got["forwarded"] == calls + retransmitted
    assert got["ok_out"] == got["sent"] == calls + retransmitted
    assert got["turnaround"] == got["sent"] and got["link"] == got["forwarded"]


def test_dashboard_and_alerts_use_only_metrics_a_live_scrape_has(cluster):
    names = {name for name, _ in scrape(cluster)}
    used = referenced(dashboard_queries()) | referenced(alert_queries())
    assert used - names == set()


def test_sip_message_logging_switched_on_without_restart(cluster, etcd_server):
    call_id = f"logged-{uuid.uuid4().hex[:8]}"
    argv = [sys.executable, "-m", "cluster.observability.sip_logging", "--etcd", etcd_server.endpoint]
    on = subprocess.run(argv + ["--call-id", call_id], capture_output=True, text=True, env=cluster.env,
                        cwd=ROOT, timeout=30)
    assert on.returncode == 0, on.stderr
    logs = sorted((cluster.state_dir / "up").glob("worker-*.log"))

    def logged():
        assert options(cluster.port, call_id)[0] == 200
        for path in logs:
            for line in path.read_text().splitlines():
                if line.startswith("{") and '"sip message"' in line and call_id in line:
                    record = json.loads(line)
                    if record["direction"] == "out":
                        return record
        return None

    record = wait_for(logged, timeout=20, what="the selected call's messages in a worker log")
    assert record["sip"].startswith("SIP/2.0 200 OK") and record["call_id"] == call_id
    assert record["trace_id"] == f"{trace_id_for(call_id):032x}"
    off = subprocess.run(argv + ["--clear"], capture_output=True, text=True, env=cluster.env, cwd=ROOT,
                         timeout=30)
    assert off.returncode == 0, off.stderr


def test_readiness_flips_when_etcd_stops_and_comes_back(cluster, etcd_server):
    urls = [m["http"] + "/readyz" for m in cluster.status()["members"]]
    assert all(get(url)[0] == 200 for url in urls)
    etcd_server.stop()
    try:
        wait_for(lambda: all(get(url)[0] == 503 for url in urls), timeout=30,
                 what="every node not ready while etcd is down")
        status, body = get(urls[0])
        assert b"etcd" in body
    finally:
        etcd_server.start()
    wait_for(lambda: all(get(url)[0] == 200 for url in urls), timeout=60,
             what="every node ready again after etcd is back")
