"""The drill's window into etcd, run inside the control namespace (the etcd
members' addresses exist only there): one JSON request per input line, one
JSON answer per output line, so a drill asks many questions for the price of
one process start.

Requests: ``{"op": "members"}`` -> ``{"worker": [ids], "edge": [ids]}``;
``{"op": "users", "domain": D, "users": [[name, password], ...]}`` -> ``{"added": n}``;
``{"op": "bindings"}`` -> ``{"aors": [aor, ...]}``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import etcd3

from cluster.auth.users import make_user_record, user_key
from cluster.registrar.etcd_store import location_prefix, split_key
from cluster.sharding.membership import members_prefix

PREFIX = "/sipcluster"


def _answer(client: Any, request: dict[str, Any]) -> dict[str, Any]:
    op = request.get("op")
    if op == "members":
        found: dict[str, list[str]] = {"worker": [], "edge": []}
        for _value, meta in client.get_prefix(members_prefix(PREFIX)):
            parts = meta.key.decode().rstrip("/").split("/")
            found.setdefault(parts[-2], []).append(parts[-1])
        return found
    if op == "users":
        for name, password in request["users"]:
            record = make_user_record(f"{name}@{request['domain']}", password)
            client.put(user_key(PREFIX, f"{name}@{request['domain']}"),
                       json.dumps(record, sort_keys=True, separators=(",", ":")))
        return {"added": len(request["users"])}
    if op == "bindings":
        root = location_prefix(PREFIX)
        aors = sorted({split_key(root, meta.key)[0]
                       for _value, meta in client.get_prefix(root, keys_only=True)})
        return {"aors": aors}
    return {"error": f"unknown op {op!r}"}


def main(endpoints: list[str]) -> None:
    hosts = [(url.split("//")[-1].rsplit(":", 1)[0], int(url.rsplit(":", 1)[1])) for url in endpoints]
    client = etcd3.MultiEndpointEtcd3Client(
        endpoints=[etcd3.Endpoint(host, port, secure=False) for host, port in hosts],
        timeout=3, failover=True)
    for line in sys.stdin:
        try:
            answer = _answer(client, json.loads(line))
        except Exception as exc:  # noqa: BLE001 - any failure is the answer, the probe keeps serving
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
