"""ops/guide/dns.md states what the code does: the statuses, the limits,
the metric events it lists are ones the code counts."""

from __future__ import annotations

import re
from pathlib import Path

from cluster.dns.rfc3263 import Limits
from cluster.proxy.failover import DNS_FAILED, UNRESOLVABLE
from nodes.worker.resolver import MAX_PENDING, MAX_RECORDS

ROOT = Path(__file__).resolve().parents[2]
GUIDE = (ROOT / "ops" / "guide" / "dns.md").read_text()
SOURCES = "".join(p.read_text() for d in ("cluster", "nodes") for p in (ROOT / d).rglob("*.py"))


def test_the_statuses_and_limits_are_the_codes():
    assert f"**{UNRESOLVABLE}** Temporarily Unavailable" in GUIDE
    assert f"**{DNS_FAILED}** Server Time-out" in GUIDE
    limits = Limits()
    assert f"{MAX_RECORDS} records kept per answer, {limits.max_records} used, " \
           f"{limits.max_destinations}\ndestinations, {limits.max_queries} lookups" in GUIDE
    assert f"more than {MAX_PENDING:,} lookups in flight" in GUIDE


def test_every_event_listed_is_counted_somewhere():
    section = GUIDE[GUIDE.index("## Metrics"):]
    events = set(re.findall(r"`([a-z_]+)`", section)) - {"lookup_ok"}
    events = {e for e in events if not e.startswith("sipcluster_")}
    assert len(events) >= 12
    for event in events:
        assert f'"dns_{event}"' in SOURCES or f'"dns_{event}' in SOURCES, event
