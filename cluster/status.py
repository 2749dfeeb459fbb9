"""``sipcluster status``: members, ring epoch and each shard's share.

The JSON form (``--json``) is stable:

    {"etcd": URL, "prefix": P, "revision": int, "ring_epoch": int,
     "members": [{"id", "role", "link", "curve_key", "http", "metrics", "ready", "pid", "host", "started",
                  "last_heartbeat", "ring_epoch",
                  "share" (workers only), "status" (the node's /status JSON or null)}],
     "rejected": {key: reason}}

``http`` is the node's HTTP endpoint URL (``http://host:port``, empty when
the node serves none); ``metrics`` is where Prometheus scrapes it
(``<http>/metrics``, null without ``http``); ``ready`` is what the node's
``/readyz`` answers (true, false, or null when the node could not be asked).
``last_heartbeat`` is when etcd last confirmed the node's lease keep-alive
(Unix seconds, by the node's clock; null when unknown) and ``ring_epoch``
the epoch of the ring the node routes with (edges) or follows (workers):
a node whose epoch lags the cluster's, or whose heartbeat is older than the
lease TTL, is cut from etcd (ops/guide/operations.md, failover).
"""

from __future__ import annotations

import json
import time
import urllib.request

from .coordination.connection import EtcdConnection
from .discovery import ClusterTarget
from .sharding.membership import MembershipView, members_prefix


def _node_status(url: str) -> dict | None:
    if not url:
        return None
    try:
        with urllib.request.urlopen(f"{url}/status", timeout=1.0) as reply:
            return json.loads(reply.read())
    except (OSError, ValueError):
        return None


def cluster_status(target: ClusterTarget, *, fetch_nodes: bool = True) -> dict:
    """The cluster's state; ``CoordinationError`` when etcd cannot be read."""
    connection = EtcdConnection(target.access)
    try:
        response = connection.run("status", lambda: connection.client().get_prefix_response(
            members_prefix(target.prefix)))
        revision = response.header.revision
        kvs = [(kv.key, kv.value) for kv in response.kvs]
    finally:
        connection.close()
    view = MembershipView.from_kvs(revision, kvs)
    ring = view.ring()
    members = []
    for member in sorted(view.members.values(), key=lambda m: (m.role, m.id)):
        entry: dict[str, object] = {"id": member.id, "role": member.role, "link": member.link, "http": member.http,
                 "metrics": f"{member.http}/metrics" if member.http else None,
                 "pid": member.pid, "host": member.host, "started": member.started,
                 "curve_key": member.curve_key or None}
        if member.role == "worker":
            entry["share"] = round(ring.share(member.id), 6)
        node = _node_status(member.http) if fetch_nodes else None
        entry["status"] = node
        entry["ready"] = node.get("ready") if node else None
        entry["last_heartbeat"] = node.get("last_heartbeat") if node else None
        entry["ring_epoch"] = node.get("ring_epoch") if node else None
        members.append(entry)
    return {"etcd": target.etcd, "prefix": target.prefix, "revision": revision,
            "ring_epoch": ring.epoch, "members": members, "rejected": dict(view.rejected)}


# /status says ready true or false; anything else (absent, unreachable) is "?".
_READY: dict[object, str] = {True: "yes", False: "no"}


def _ago(then: object, now: float) -> str:
    """'0.4s' for a Unix time 0.4 s before ``now``; '?' when unknown."""
    if isinstance(then, bool) or not isinstance(then, (int, float)):
        return "?"
    return f"{max(0.0, now - then):.1f}s"


def render_status(status: dict, *, now: float | None = None) -> str:
    now = time.time() if now is None else now
    lines = [f"cluster {status['etcd']} prefix {status['prefix']}  ring epoch {status['ring_epoch']}",
             f"{'ROLE':7} {'ID':24} {'PID':>7} {'SHARE':>7} {'READY':6} {'EPOCH':>7} {'HEARTBEAT':>9} HTTP"]
    for m in status["members"]:
        share = f"{m['share'] * 100:6.1f}%" if "share" in m else ""
        node = m.get("status") or {}
        ready = _READY.get(node.get("ready"), "?")
        epoch = node.get("ring_epoch")
        heartbeat = _ago(node.get("last_heartbeat"), now)
        lines.append(f"{m['role']:7} {m['id']:24} {m['pid']:>7} {share:>7} {ready:6} "
                     f"{'?' if epoch is None else epoch:>7} {heartbeat:>9} {m['http']}")
    if status["rejected"]:
        lines.append(f"rejected records: {status['rejected']}")
    return "\n".join(lines)
