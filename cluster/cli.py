"""The ``sipcluster`` command.

    sipcluster up [--workers N] [--edges N] [--listen [TRANSPORT:]HOST:PORT ...]
                  [--tls-cert FILE --tls-key FILE] [--etcd URL] [--domain D]
    sipcluster edge   [--config FILE]
    sipcluster worker [--config FILE]
    sipcluster status [--json] [--etcd URL] [--prefix P] [--config FILE]
    sipcluster user add USER [--password-stdin] [--realm R] [--replace]
    sipcluster user set USER [KEY=VALUE ...] [--password | --password-stdin]
    sipcluster user del USER | list [--json]
    sipcluster keys generate --dir DIR [--force]
    sipcluster bans list [--json]
    sipcluster bans del ADDRESS|USER
    sipcluster dispatcher add SET URI [--priority N] [--weight N] [--policy P]
    sipcluster dispatcher remove SET [URI] | list [--json]

Every command that talks to a cluster finds it the same way
(:func:`cluster.discovery.find_cluster`): ``--etcd`` if given, else the node
configuration (``--config`` or ``$SIPCLUSTER_CONFIG``, and
``SIPCLUSTER_CLUSTER_ETCD*`` variables, which also carry etcd's TLS files,
user and password), else the cluster ``sipcluster up`` runs on this machine
(``--cluster HOST:PORT`` chooses when several run), else etcd on 127.0.0.1:2379.

Passwords are never taken from the command line (``ps`` and shell history
would show them): ``user add`` asks for one at the terminal, twice, or reads
the first line of standard input with ``--password-stdin``.
"""

from __future__ import annotations

import argparse
import getpass
import json
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
    try:
        return trio.run(run_node, role, config)
    except ConfigError as error:
        # Found while starting (e.g. an unreadable cluster.link_secret_dir key pair).
        print(f"sipcluster {role}: configuration error: {error}", file=sys.stderr)
        return 2


def _keys(args: argparse.Namespace) -> int:
    from .link.keys import write_keys
    try:
        public, secret = write_keys(args.dir, force=args.force)
    except (OSError, FileExistsError) as error:
        print(f"sipcluster keys generate: {error}", file=sys.stderr)
        return 1
    print(f"wrote {public} (public) and {secret} (secret, mode 0600); "
          f"point cluster.link_secret_dir at {args.dir}")
    return 0


def _target(command: str, args: argparse.Namespace):
    """The cluster ``args`` name, or None after printing why it cannot be used."""
    from .discovery import ClusterNotFound, find_cluster
    try:
        return find_cluster(args.etcd, args.prefix, args.config, cluster_listen=args.cluster)
    except ConfigError as error:
        print(f"sipcluster {command}: configuration error: {error}", file=sys.stderr)
        return None
    except ClusterNotFound as error:
        print(f"sipcluster {command}: {error}", file=sys.stderr)
        return None


def _status(args: argparse.Namespace) -> int:
    from .coordination.errors import CoordinationError
    from .status import cluster_status, render_status
    target = _target("status", args)
    if target is None:
        return 2
    try:
        status = cluster_status(target)
    except CoordinationError as error:
        print(f"sipcluster status: cannot read the cluster at {target.etcd}: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        print(render_status(status))
    return 0


NO_PASSWORD_ARGUMENT = ("passwords are not taken on the command line (ps and shell history show "
                        "them): type it at the prompt, or pipe it in with --password-stdin")


def read_password(user: str, from_stdin: bool, stdin=None) -> str:
    """The new password: the first line of ``stdin`` with ``--password-stdin``,
    else asked twice at the terminal. ValueError when there is none."""
    stdin = stdin or sys.stdin
    if from_stdin:
        password = stdin.readline().rstrip("\r\n")
    elif not stdin.isatty():
        raise ValueError("no terminal to ask for the password on: use --password-stdin")
    else:
        password = getpass.getpass(f"Password for {user}: ")
        if getpass.getpass("Same password again: ") != password:
            raise ValueError("the two passwords differ")
    if not password:
        raise ValueError("empty password")
    return password


def _settings(items: list[str]) -> dict:
    settings = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"setting {item!r}: expected key=value")
        if value == "":
            continue
        settings[key] = int(value) if value.isdigit() else (
            value.lower() == "true" if value.lower() in ("true", "false") else value)
    return settings


def _on_cluster(command: str, args: argparse.Namespace, directory_type, action) -> int:
    """``action(directory)`` on the cluster ``args`` name, with a
    ``directory_type(access, prefix)`` (``UserDirectory``, ``BanDirectory``)
    closed after; an etcd failure is one line naming the cluster."""
    from .coordination.errors import CoordinationError
    target = _target(command, args)
    if target is None:
        return 2
    directory = directory_type(target.access, target.prefix)
    try:
        return action(directory)
    except CoordinationError as error:
        print(f"sipcluster {command}: cannot use the cluster at {target.etcd}: {error}", file=sys.stderr)
        return 1
    finally:
        directory.close()


def _user(args: argparse.Namespace) -> int:
    from .auth.users import UserDirectory
    if getattr(args, "password", None) is not None and args.action == "add":
        print(f"sipcluster user add: {NO_PASSWORD_ARGUMENT}", file=sys.stderr)
        return 2
    return _on_cluster(f"user {args.action}", args, UserDirectory,
                       lambda directory: _user_action(directory, args))


def _user_action(directory, args: argparse.Namespace) -> int:
    from .auth.users import UnknownUser, UserExists
    try:
        if args.action == "add":
            password = read_password(args.user, args.password_stdin)
            directory.add(args.user, password, realm=args.realm, replace=args.replace)
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
            settings = _settings(args.settings)
            if args.new_password or args.password_stdin:
                existing = directory.get(args.user)
                if existing is None:
                    raise UnknownUser(f"no user {args.user}")
                password = read_password(args.user, args.password_stdin)
                # The HA1s hash the realm in: keep the user's.
                record = directory.add(args.user, password, realm=existing.realm, replace=True)
                print(f"new password for {args.user} (realm {record.realm})")
            if settings or not (args.new_password or args.password_stdin):
                directory.set_settings(args.user, settings)
                print(f"settings of {args.user}: {settings}")
    except (ValueError, UserExists, UnknownUser) as error:
        print(f"sipcluster user {args.action}: {error}", file=sys.stderr)
        return 1
    return 0


def _bans(args: argparse.Namespace) -> int:
    """``bans list``: every ban in etcd with its reason and time left;
    ``bans del``: lift the bans of an address or a user on every node."""
    from .defence.store import BanDirectory
    return _on_cluster(f"bans {args.action}", args, BanDirectory,
                       lambda directory: _bans_action(directory, args))


def _bans_action(directory, args: argparse.Namespace) -> int:
    import time
    if args.action == "del":
        lifted = directory.delete(args.subject)
        if not lifted:
            print(f"sipcluster bans del: no ban of {args.subject}", file=sys.stderr)
            return 1
        print(f"lifted the {' and '.join(lifted)} ban of {args.subject}")
        return 0
    now = time.time()
    bans = directory.list(now)
    if args.json:
        print(json.dumps([{"kind": b.kind, "subject": b.subject, "reason": b.reason, "by": b.by,
                           "detail": b.detail, "until": b.until,
                           "seconds_left": max(0, round(b.until - now))} for b in bans], indent=2))
        return 0
    for b in bans:
        until = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(b.until))
        print(f"{b.kind:4}  {b.subject}  reason={b.reason}  until={until} "
              f"({max(0, round(b.until - now))} s)  by={b.by}  {b.detail}".rstrip())
    return 0


def _dispatcher(args: argparse.Namespace) -> int:
    """Destination sets: ``add`` a member (making the set), ``remove`` a
    member or a set, ``list`` every set with each member's health."""
    from .dispatch.directory import DispatcherDirectory
    return _on_cluster(f"dispatcher {args.action}", args, DispatcherDirectory,
                       lambda directory: _dispatcher_action(directory, args))


def _dispatcher_action(directory, args: argparse.Namespace) -> int:
    from .dispatch import InvalidSet
    try:
        if args.action == "add":
            dset = directory.add(args.set, args.uri, priority=args.priority, weight=args.weight,
                                 policy=args.policy)
            print(f"set {dset.name} ({dset.policy}): {len(dset.members)} member(s)")
        elif args.action == "remove":
            if not directory.remove(args.set, args.uri):
                what = f"member {args.uri} in set {args.set}" if args.uri else f"set {args.set}"
                print(f"sipcluster dispatcher remove: no {what}", file=sys.stderr)
                return 1
            print(f"removed {args.uri + ' from ' if args.uri else ''}set {args.set}")
        else:
            _dispatcher_list(directory.list(), args.json)
    except InvalidSet as error:
        print(f"sipcluster dispatcher {args.action}: {error}", file=sys.stderr)
        return 1
    return 0


def _dispatcher_list(sets, as_json: bool) -> None:
    def health(record) -> str:
        # Never probed yet: it counts as up for routing until a probe says otherwise.
        return "unknown" if record is None else ("up" if record.up else "down")
    if as_json:
        print(json.dumps([{"set": d.name, "policy": d.policy, "members": [
            {"uri": m.uri, "priority": m.priority, "weight": m.weight, "health": health(h.get(m.uri)),
             "last_status": h[m.uri].status if m.uri in h else None,
             "probed_by": h[m.uri].by if m.uri in h else None} for m in d.members]}
            for d, h in sets], indent=2))
        return
    for d, h in sets:
        print(f"{d.name}  policy={d.policy}")
        for m in d.members:
            record = h.get(m.uri)
            status = "" if record is None else f"  last={record.status if record.status is not None else 'timeout'}"
            print(f"  {m.uri}  priority={m.priority}  weight={m.weight}  {health(record)}{status}")


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
    up.add_argument("--listen", action="append", default=None, metavar="[TRANSPORT:]HOST:PORT",
                    help="SIP socket of the first edge (repeatable): udp:, tcp:, tls:, ws: or wss: before "
                         "HOST:PORT, or a bare HOST:PORT for UDP and TCP; the first must be UDP "
                         "(default 127.0.0.1:5060); each further edge adds 10 to every port")
    up.add_argument("--tls-cert", default=None, metavar="FILE",
                    help="PEM certificate chain for tls: and wss: listeners (edge.tls_cert)")
    up.add_argument("--tls-key", default=None, metavar="FILE", help="PEM private key of --tls-cert (edge.tls_key)")
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
    add = user_sub.add_parser("add", help="add a user: sipcluster user add alice@example.com "
                                          "(asks for the password, or --password-stdin)")
    add.add_argument("user")
    # Only to refuse it with a reason: argparse's "unrecognized arguments" says nothing.
    add.add_argument("password", nargs="?", help=argparse.SUPPRESS)
    add.add_argument("--password-stdin", action="store_true",
                     help="read the password from the first line of standard input")
    add.add_argument("--realm", default=None, help="digest realm (default: the domain)")
    add.add_argument("--replace", action="store_true", help="replace an existing user")
    delete = user_sub.add_parser("del", help="delete a user")
    delete.add_argument("user")
    listing = user_sub.add_parser("list", help="list users")
    listing.add_argument("--json", action="store_true")
    setting = user_sub.add_parser("set", help="per-user settings, e.g. forward_busy=sip:vm@example.com")
    setting.add_argument("user")
    setting.add_argument("settings", nargs="*", metavar="KEY=VALUE")
    password = setting.add_mutually_exclusive_group()
    password.add_argument("--password", dest="new_password", action="store_true",
                          help="also set a new password, asked for at the terminal")
    password.add_argument("--password-stdin", action="store_true",
                          help="also set a new password, read from the first line of standard input")
    user.set_defaults(func=_user)

    keys = sub.add_parser("keys", help="CurveZMQ key pairs for node links")
    keys_sub = keys.add_subparsers(dest="action", required=True)
    generate = keys_sub.add_parser("generate", help="write link.key and link.key_secret into --dir")
    generate.add_argument("--dir", required=True, help="directory for cluster.link_secret_dir")
    generate.add_argument("--force", action="store_true", help="replace an existing key pair")
    keys.set_defaults(func=_keys)

    status = sub.add_parser("status", help="show members, ring epoch and shard shares")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=_status)

    bans = sub.add_parser("bans", help="source addresses and users banned by the edge defences")
    bans_sub = bans.add_subparsers(dest="action", required=True)
    bans_list = bans_sub.add_parser("list", help="every ban in force, with reason and expiry")
    bans_list.add_argument("--json", action="store_true", help="machine-readable output")
    bans_del = bans_sub.add_parser("del", help="lift the ban of an address or a user (user@realm)")
    bans_del.add_argument("subject", metavar="ADDRESS|USER")
    bans.set_defaults(func=_bans)

    from .dispatch import POLICIES
    dispatcher = sub.add_parser("dispatcher", help="destination sets: named SIP targets with health probes")
    dispatcher_sub = dispatcher.add_subparsers(dest="action", required=True)
    ds_add = dispatcher_sub.add_parser("add", help="add a member to a set (making the set), or change it")
    ds_add.add_argument("set")
    ds_add.add_argument("uri", help="sip: or sips: URI, e.g. sip:gw1.example.net:5060")
    ds_add.add_argument("--priority", type=int, default=0, help="lower is tried first (default 0)")
    ds_add.add_argument("--weight", type=int, default=1, help="share under the weighted policy (default 1)")
    ds_add.add_argument("--policy", choices=POLICIES, default=None,
                        help="the set's policy (default priority for a new set; unchanged otherwise)")
    ds_remove = dispatcher_sub.add_parser("remove", help="remove a member, or the whole set")
    ds_remove.add_argument("set")
    ds_remove.add_argument("uri", nargs="?", default=None)
    ds_list = dispatcher_sub.add_parser("list", help="every set, with each member's health")
    ds_list.add_argument("--json", action="store_true", help="machine-readable output")
    dispatcher.set_defaults(func=_dispatcher)
    for p in (add, delete, listing, setting, status, bans_list, bans_del, ds_add, ds_remove, ds_list):
        add_cluster_arguments(p)
    return parser


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    """``--etcd``, ``--prefix``, ``--config`` and ``--cluster``, read by ``discovery.find_cluster``."""
    parser.add_argument("--etcd", default=None, help="etcd endpoint URL(s), comma-separated")
    parser.add_argument("--prefix", default=None, help="etcd key prefix")
    parser.add_argument("--config", default=None,
                        help="node config file for etcd TLS files, user and password "
                             "(default $SIPCLUSTER_CONFIG; SIPCLUSTER_CLUSTER_ETCD_* variables apply)")
    parser.add_argument("--cluster", default=None, metavar="HOST:PORT",
                        help="which `sipcluster up` on this machine, by its listen address "
                             "(needed when several run)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
