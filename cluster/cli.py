"""The ``sipcluster`` command.

    sipcluster up [--workers N] [--edges N] [--listen HOST:PORT] [--etcd URL] [--domain D]
    sipcluster edge   [--config FILE]
    sipcluster worker [--config FILE]
    sipcluster status [--json] [--etcd URL] [--prefix P]

Every command that talks to a cluster finds it the same way
(:func:`cluster.discovery.find_cluster`): ``--etcd`` if given, else
``SIPCLUSTER_CLUSTER_ETCD``, else the cluster ``sipcluster up`` started on this
machine (its discovery file), else etcd on 127.0.0.1:2379.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys

import trio

from . import __version__
from .config import ConfigError, load_config


def _node_command(role: str, args: argparse.Namespace) -> int:
    overrides = {}
    if args.node_id:
        overrides["cluster.node_id"] = args.node_id
    try:
        config = load_config(args.config, overrides=overrides)
    except ConfigError as error:
        print(f"sipcluster {role}: configuration error: {error}", file=sys.stderr)
        return 2
    from .logs import setup_logging
    setup_logging(config.log.level, config.log.format, node=config.cluster.node_id)
    from nodes.runner import run_node
    return trio.run(run_node, role, config)


def _status(args: argparse.Namespace) -> int:
    from .discovery import find_cluster
    from .status import cluster_status, render_status
    target = find_cluster(args.etcd, args.prefix)
    try:
        status = cluster_status(target)
    except Exception as error:  # noqa: BLE001 - report any connection failure plainly
        print(f"sipcluster status: cannot read the cluster at {target.etcd}: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        print(render_status(status))
    return 0


def _user(args: argparse.Namespace) -> int:
    import etcd3

    from .auth.users import UnknownUser, UserDirectory, UserExists
    from .discovery import find_cluster
    target = find_cluster(args.etcd, args.prefix)
    host, port = target.host_port
    client = etcd3.client(host=host, port=port, timeout=10)
    directory = UserDirectory(client, target.prefix)
    try:
        if args.action == "add":
            directory.add(args.user, args.password, realm=args.realm, replace=args.replace)
            print(f"added {args.user}")
        elif args.action == "del":
            if not directory.delete(args.user):
                print(f"sipcluster user del: no user {args.user}", file=sys.stderr)
                return 1
            print(f"deleted {args.user}")
        elif args.action == "list":
            records = directory.list()
            if args.json:
                print(json.dumps([{"aor": r.aor, "realm": r.realm, "settings": dict(r.settings)}
                                  for r in records], indent=2))
            else:
                for r in records:
                    extra = " ".join(f"{k}={v}" for k, v in sorted(r.settings.items()))
                    print(f"{r.aor}  realm={r.realm}  {extra}".rstrip())
        elif args.action == "set":
            settings = {}
            for item in args.settings:
                key, sep, value = item.partition("=")
                if not sep:
                    raise ValueError(f"setting {item!r}: expected key=value")
                if value == "":
                    continue
                settings[key] = int(value) if value.isdigit() else (
                    value.lower() == "true" if value.lower() in ("true", "false") else value)
            directory.set_settings(args.user, settings)
            print(f"settings of {args.user}: {settings}")
    except (ValueError, UserExists, UnknownUser) as error:
        print(f"sipcluster user {args.action}: {error}", file=sys.stderr)
        return 1
    except Exception as error:  # noqa: BLE001 - etcd unreachable and similar
        print(f"sipcluster user {args.action}: cannot reach the cluster at {target.etcd}: {error}",
              file=sys.stderr)
        return 1
    finally:
        client.close()
    return 0


def _up(args: argparse.Namespace) -> int:
    from .local import LocalCluster, UpOptions
    try:
        options = UpOptions.from_args(args)
    except ValueError as error:
        print(f"sipcluster up: {error}", file=sys.stderr)
        return 2
    return trio.run(LocalCluster(options).run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sipcluster", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"sipcluster {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start a complete local cluster (etcd, edges, workers)")
    up.add_argument("--workers", type=int, default=None, help="worker processes (default: CPU count)")
    up.add_argument("--edges", type=int, default=1, help="edge processes (default 1)")
    up.add_argument("--listen", default="127.0.0.1:5060",
                    help="SIP address of the first edge, UDP and TCP (default 127.0.0.1:5060)")
    up.add_argument("--etcd", default=None, help="use this etcd instead of starting one")
    up.add_argument("--domain", action="append", default=None,
                    help="local SIP domain (repeatable; default localhost)")
    up.add_argument("--prefix", default=None, help="etcd key prefix (default /sipcluster)")
    up.add_argument("--app", default=None, help="routing application module:object")
    up.add_argument("--http", action="store_true", default=True, help=argparse.SUPPRESS)
    up.add_argument("--state-dir", default=None, help="where to keep configs and etcd data")
    up.set_defaults(func=_up)

    for role in ("edge", "worker"):
        node = sub.add_parser(role, help=f"run one {role} node")
        node.add_argument("--config", default=None, help="TOML config file")
        node.add_argument("--node-id", default=None, help="override cluster.node_id")
        node.set_defaults(func=lambda args, role=role: _node_command(role, args))

    user = sub.add_parser("user", help="manage SIP users (digest credentials and settings)")
    user_sub = user.add_subparsers(dest="action", required=True)
    add = user_sub.add_parser("add", help="add a user: sipcluster user add alice@example.com PASSWORD")
    add.add_argument("user")
    add.add_argument("password")
    add.add_argument("--realm", default=None, help="digest realm (default: the domain)")
    add.add_argument("--replace", action="store_true", help="replace an existing user")
    delete = user_sub.add_parser("del", help="delete a user")
    delete.add_argument("user")
    listing = user_sub.add_parser("list", help="list users")
    listing.add_argument("--json", action="store_true")
    setting = user_sub.add_parser("set", help="per-user settings, e.g. forward_busy=sip:vm@example.com")
    setting.add_argument("user")
    setting.add_argument("settings", nargs="*", metavar="KEY=VALUE")
    for p in (add, delete, listing, setting):
        p.add_argument("--etcd", default=None, help="etcd endpoint URL")
        p.add_argument("--prefix", default=None, help="etcd key prefix")
    user.set_defaults(func=_user)

    status = sub.add_parser("status", help="show members, ring epoch and shard shares")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--etcd", default=None, help="etcd endpoint URL")
    status.add_argument("--prefix", default=None, help="etcd key prefix")
    status.set_defaults(func=_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
