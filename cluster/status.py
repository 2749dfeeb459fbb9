"""``sipcluster status``: members, ring epoch and each shard's share.

The JSON form (``--json``) is stable:

    {"etcd": URL, "prefix": P, "revision": int, "ring_epoch": int,
     "members": [{"id", "role", "link", "curve_key", "http", "metrics", "ready", "pid", "host", "started",
                  "share" (workers only), "status" (the node's /status JSON or null)}],
     "rejected": {key: reason}}

``http`` is the node's HTTP endpoint URL (``http://host:port``, empty when
the node serves none); ``metrics`` is where Prometheus scrapes it
(``<http>/metrics``, null without ``http``); ``ready`` is what the node's
``/readyz`` answers (true, false, or null when the node could not be asked).
"""

from __future__ import annotations

import json
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
        members.append(entry)
    return {"etcd": target.etcd, "prefix": target.prefix, "revision": revision,
            "ring_epoch": ring.epoch, "members": members, "rejected": dict(view.rejected)}


# /status says ready true or false; anything else (absent, unreachable) is "?".
_READY: dict[object, str] = {True: "yes", False: "no"}


def render_status(status: dict) -> str:
    lines = [f"cluster {status['etcd']} prefix {status['prefix']}  ring epoch {status['ring_epoch']}",
             f"{'ROLE':7} {'ID':24} {'PID':>7} {'SHARE':>7} {'READY':6} HTTP"]
    for m in status["members"]:
        share = f"{m['share'] * 100:6.1f}%" if "share" in m else ""
        node = m.get("status") or {}
        ready = _READY.get(node.get("ready"), "?")
        lines.append(f"{m['role']:7} {m['id']:24} {m['pid']:>7} {share:>7} {ready:6} {m['http']}")
    if status["rejected"]:
        lines.append(f"rejected records: {status['rejected']}")
    return "\n".join(lines)
