"""The Grafana dashboard and the Prometheus alert rules use only metric names
the nodes export. Here against every family the nodes declare; the e2e test
(tests/e2e/test_observability.py) checks them against a live scrape too."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from cluster.config import load_config
from nodes.edge.metrics import edge_metrics
from nodes.worker.metrics import worker_metrics
from tests.e2e.harness import free_port_pair

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "ops" / "dashboards" / "sipcluster.json"
ALERTS = ROOT / "ops" / "alerts" / "sipcluster.rules.yml"

_NAME = re.compile(r"\b((?:sipcluster|process)_[a-z0-9_]+)")
_HISTOGRAM_SUFFIX = re.compile(r"_(bucket|sum|count)$")


def dashboard_queries() -> list[str]:
    document = json.loads(DASHBOARD.read_text())
    queries = []

    def walk(panels):
        for panel in panels:
            queries.extend(t["expr"] for t in panel.get("targets", []) if t.get("expr"))
            walk(panel.get("panels", []))
    walk(document["panels"])
    for variable in document.get("templating", {}).get("list", []):
        query = variable.get("query")
        if isinstance(query, dict):
            queries.append(query.get("query", ""))
    return queries


def alert_queries() -> list[str]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule["expr"] for group in document["groups"] for rule in group["rules"]]


def referenced(queries: list[str]) -> set[str]:
    return {name for query in queries for name in _NAME.findall(query)}


def sample_names(families: frozenset[str]) -> set[str]:
    """Names a query may use: counters as is, histograms with their suffixes."""
    out = set(families)
    for name in families:
        if name.endswith("_seconds"):
            out |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return out


@pytest.fixture(scope="module")
def exported() -> set[str]:
    from nodes.edge.node import EdgeNode
    from nodes.worker.node import WorkerNode
    port = free_port_pair()
    config = load_config(None, env={}, overrides={
        "edge.listen": [f"udp:127.0.0.1:{port}"], "cluster.node_id": "n1"})
    edge = EdgeNode(config)
    worker = WorkerNode(config)
    try:
        names = edge_metrics(edge).names() | worker_metrics(worker).names()
    finally:
        for listener in edge.udp.values():
            listener.sock.close()
        edge.inbox.close()
        worker.inbox.close()
    return sample_names(names)


def test_alert_rules_are_well_formed():
    document = yaml.safe_load(ALERTS.read_text())
    rules = [rule for group in document["groups"] for rule in group["rules"]]
    assert len(rules) >= 10
    for rule in rules:
        assert rule["alert"].startswith("Sipcluster") and rule["expr"].strip()
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "0s"))


def test_dashboard_is_grafana_json_with_prometheus_queries():
    document = json.loads(DASHBOARD.read_text())
    assert document["uid"] and document["schemaVersion"] >= 30
    assert len(dashboard_queries()) >= 25
    ids = [p["id"] for p in document["panels"]]
    assert len(ids) == len(set(ids))


def test_every_metric_in_dashboard_and_alerts_is_exported(exported):
    used = referenced(dashboard_queries()) | referenced(alert_queries())
    assert used, "no metric names found"
    assert used - exported == set()
    # Histograms are queried through their buckets, never by the bare family name.
    assert not {n for n in used if n.endswith("_seconds") and "hop_latency" in n}
    assert {"sipcluster_calls_started_total", "sipcluster_hop_latency_seconds_bucket",
            "sipcluster_registrations", "sipcluster_drops_total"} <= used
