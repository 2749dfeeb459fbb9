"""Full SIP message logging for chosen calls and users, switched on without a restart.

The selection lives in etcd under ``<prefix>/debug/sip-log``, a JSON object::

    {"call_ids": ["a84b4c76e66710@pc33"], "users": ["alice@example.com", "bob"],
     "until": 1767225600}

Every worker watches that key (whoever may write etcd may turn it on, the
same people who manage credentials there) and logs
each SIP message it receives or sends whose Call-ID is listed, or whose From
or To URI is a listed user (``user@host``, or a bare ``user`` for any host),
as one ``sip message`` record (logger ``sipcluster.sip``, level info) with
``direction``, ``peer``, ``transport``, ``call_id`` and the whole message in
``sip``. ``until`` (Unix seconds, optional) ends the logging by itself; an
absent or empty key turns it off. Edges do not log: every message of a call
passes through its owner worker, which logs both directions.

Set it with ``python -m cluster.observability.sip_logging --call-id ID --user
alice@example.com [--for 600]`` (``--clear`` to stop), or ``etcdctl put``.

With nothing selected the hot path pays one attribute test (``active``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:  # pragma: no cover
    from cluster.coordination import EtcdStore
    from cluster.sip import Message

__all__ = ["SipLogSelection", "debug_key", "follow_selection", "main"]

log = logging.getLogger("sipcluster.sip")
control_log = logging.getLogger("sipcluster.observability")


def debug_key(prefix: str) -> str:
    return f"{prefix.rstrip('/')}/debug/sip-log"


class SipLogSelection:
    """Which calls and users to log; ``active`` is the hot path's only test."""

    __slots__ = ("active", "call_ids", "users", "user_parts", "until", "clock")

    def __init__(self, clock=time.time) -> None:
        self.active = False
        self.call_ids: frozenset[str] = frozenset()
        self.users: frozenset[str] = frozenset()
        self.user_parts: frozenset[str] = frozenset()
        self.until: float | None = None
        self.clock = clock

    def load(self, value: bytes | None) -> None:
        """Replace the selection with the key's value (None or b"" clears it).
        A value that is not the documented JSON clears it too, and says why."""
        call_ids: set[str] = set()
        users: set[str] = set()
        until = None
        if value:
            try:
                document = json.loads(value)
                if not isinstance(document, dict):
                    raise ValueError("not a JSON object")
                call_ids = {str(c) for c in document.get("call_ids", ()) if c}
                users = {str(u).lower().removeprefix("sip:").removeprefix("sips:")
                         for u in document.get("users", ()) if u}
                if document.get("until") is not None:
                    until = float(document["until"])
            except (ValueError, TypeError) as error:
                control_log.warning("ignoring the SIP log selection: %s", error)
                call_ids, users, until = set(), set(), None
        self.call_ids = frozenset(call_ids)
        self.users = frozenset(u for u in users if "@" in u)
        self.user_parts = frozenset(u for u in users if "@" not in u)
        self.until = until
        self.active = bool(call_ids or users)
        control_log.info("SIP message logging %s", "on" if self.active else "off",
                         extra={"sip_log_call_ids": len(call_ids), "sip_log_users": len(users)})

    def matches(self, message: Message) -> bool:
        if self.until is not None and self.clock() >= self.until:
            self.active = False
            control_log.info("SIP message logging ended (until reached)")
            return False
        if message.call_id in self.call_ids:
            return True
        if not (self.users or self.user_parts):
            return False
        for field in ("from_", "to"):
            try:
                uri = getattr(message, field).uri
            except Exception:  # noqa: BLE001 - a broken header is not a match
                continue
            user = (getattr(uri, "user", None) or "").lower()
            host = (getattr(uri, "host", None) or "").lower()
            if user and (user in self.user_parts or f"{user}@{host}" in self.users):
                return True
        return False

    def record(self, direction: str, message: Message, data: bytes, transport: str,
               peer: tuple[str, int]) -> None:
        """Log ``data`` if ``message`` is selected (call only when ``active``)."""
        if self.matches(message):
            log.info("sip message", extra={
                "direction": direction, "call_id": message.call_id, "transport": transport,
                "peer": f"{peer[0]}:{peer[1]}", "sip": data.decode("utf-8", "replace")})


async def follow_selection(store: EtcdStore, prefix: str, selection: SipLogSelection, *,
                           retry: float = 1.0,
                           task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Keep ``selection`` equal to the etcd key: read it, then watch it; on any
    failure read again (a missed change is never left standing)."""
    from cluster.coordination.feed import follow_prefix
    from cluster.sharding import Delete

    key = debug_key(prefix).encode()

    async def load(snapshot) -> None:
        selection.load(next((kv.value for kv in snapshot.kvs if kv.key == key), None))

    async def apply(events) -> None:
        for event in events:
            if event.key == key:
                selection.load(None if isinstance(event, Delete) else event.value)

    await follow_prefix(store, key, load=load, apply=apply, retry=retry, task_status=task_status,
                        failed=lambda error: control_log.debug("SIP log selection watch failed: %s", error))


def selection_value(call_ids: Iterable[str], users: Iterable[str], until: float | None) -> bytes:
    document: dict = {"call_ids": sorted(set(call_ids)), "users": sorted(set(users))}
    if until is not None:
        document["until"] = until
    return json.dumps(document).encode()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cluster.observability.sip_logging",
        description="Log whole SIP messages of chosen calls or users on every worker (no restart).")
    parser.add_argument("--call-id", action="append", default=[], help="a Call-ID (repeatable)")
    parser.add_argument("--user", action="append", default=[],
                        help="user@host or user, matched on From and To (repeatable)")
    parser.add_argument("--for", dest="seconds", type=float, default=None,
                        help="stop logging after this many seconds")
    parser.add_argument("--clear", action="store_true", help="stop all SIP message logging")
    from cluster.cli import add_cluster_arguments
    add_cluster_arguments(parser)
    args = parser.parse_args(argv)
    if not (args.clear or args.call_id or args.user):
        parser.error("give --call-id and/or --user, or --clear")

    from cluster.config import ConfigError
    from cluster.coordination.connection import EtcdConnection
    from cluster.coordination.errors import CoordinationError
    from cluster.discovery import ClusterNotFound, find_cluster
    try:
        target = find_cluster(args.etcd, args.prefix, args.config, cluster_listen=args.cluster)
    except ConfigError as error:
        print(f"{parser.prog}: configuration error: {error}", file=sys.stderr)
        return 2
    except ClusterNotFound as error:
        print(f"{parser.prog}: {error}", file=sys.stderr)
        return 2
    connection = EtcdConnection(target.access)
    key = debug_key(target.prefix)
    try:
        if args.clear:
            connection.run("delete", lambda: connection.client().delete(key))
            print(f"SIP message logging off ({key})")
            return 0
        until = time.time() + args.seconds if args.seconds else None
        value = selection_value(args.call_id, args.user, until)
        connection.run("put", lambda: connection.client().put(key, value))
        print(f"SIP message logging on for {len(args.call_id)} Call-ID(s), {len(args.user)} user(s) ({key})")
    except CoordinationError as error:
        print(f"{parser.prog}: cannot use the cluster at {target.etcd}: {error}", file=sys.stderr)
        return 1
    finally:
        connection.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
