"""How every command finds the cluster it talks to.

Commands read the nodes' own configuration (``cluster.config.load_config``):
a ``--config`` file or ``$SIPCLUSTER_CONFIG``, then the
``SIPCLUSTER_CLUSTER_*`` environment variables, so an operator's shell or a
Kubernetes pod reaches a TLS etcd with auth exactly as the nodes do
(``etcd_ca``, ``etcd_cert``, ``etcd_key``, ``etcd_user``, ``etcd_password``).

Endpoints, in order: an explicit ``--etcd``; ``SIPCLUSTER_CLUSTER_ETCD`` or
the config file; a cluster that ``sipcluster up`` runs on this machine;
finally etcd on 127.0.0.1:2379. The prefix follows the same order
(``--prefix``, ``SIPCLUSTER_CLUSTER_PREFIX`` or the file, the running
cluster's record, ``/sipcluster``).

Each ``sipcluster up`` records itself in a file of its own, named by its SIP
listen address, so two clusters on one machine never overwrite each other's
record. With one running, commands find it; with several, ``--cluster
HOST:PORT`` (its listen address) chooses, and without it a command refuses
and names them all instead of talking to whichever started last. Records
whose process is gone are ignored.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .config import ClusterConfig, load_config
from .coordination.connection import EtcdAccess

DEFAULT_ETCD = "http://127.0.0.1:2379"
DEFAULT_PREFIX = "/sipcluster"
_RECORDS = "up-*.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class ClusterNotFound(LookupError):
    """``--cluster`` names no running cluster, or several run and none was chosen."""


def state_dir() -> Path:
    """Where ``sipcluster up`` keeps its records."""
    configured = os.environ.get("SIPCLUSTER_STATE_DIR")
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / f"sipcluster-{os.getuid()}"


def discovery_file(listen: str) -> Path:
    """The record of the ``sipcluster up`` whose first edge listens on ``listen``."""
    return state_dir() / f"up-{_UNSAFE.sub('_', listen)}.json"


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process, alive
    return True


def running_clusters() -> list[dict]:
    """Records of the ``sipcluster up`` processes alive on this machine, by
    listen address."""
    found = []
    for path in state_dir().glob(_RECORDS):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("etcd") and _alive(record.get("pid")):
            found.append(record)
    return sorted(found, key=lambda r: str(r.get("listen", "")))


def _running_cluster(listen: str | None) -> dict:
    """The record of the one running cluster, the one on ``listen``, or {}
    when none runs; raises ``ClusterNotFound`` when the choice is unclear."""
    found = running_clusters()
    names = ", ".join(str(r.get("listen")) for r in found) or "none"
    if listen is not None:
        for record in found:
            if record.get("listen") == listen:
                return record
        raise ClusterNotFound(f"no cluster started by `sipcluster up` listens on {listen} "
                              f"(running here: {names})")
    if len(found) > 1:
        raise ClusterNotFound(f"{len(found)} clusters started by `sipcluster up` run on this "
                              f"machine ({names}); choose one with --cluster HOST:PORT or --etcd URL")
    return found[0] if found else {}


@dataclass(frozen=True)
class ClusterTarget:
    """Where a command finds the cluster: ``access`` (URLs, TLS, auth) and ``prefix``."""

    access: EtcdAccess
    prefix: str
    source: str

    @property
    def etcd(self) -> str:
        """The endpoint URLs, for messages."""
        return ",".join(self.access.endpoints)


def find_cluster(etcd: str | None = None, prefix: str | None = None, config: str | None = None,
                 *, env: Mapping[str, str] | None = None,
                 cluster_listen: str | None = None) -> ClusterTarget:
    """The cluster a command talks to; ``cluster.config.ConfigError`` for an
    unusable configuration (naming the field), ``ClusterNotFound`` when
    ``cluster_listen`` names no running ``sipcluster up`` or several run and
    nothing chose one."""
    env = os.environ if env is None else env
    loaded = load_config(config, env=env, overrides={"cluster.etcd": etcd, "cluster.prefix": prefix})
    cluster = loaded.cluster
    local: dict = {}
    defaults = ClusterConfig()
    if etcd:
        source = "--etcd"
    elif cluster.etcd != defaults.etcd:
        source = "configuration"
    else:
        local = _running_cluster(cluster_listen)
        if local:
            cluster = ClusterConfig(etcd=(local["etcd"],), prefix=cluster.prefix)
            source = f"sipcluster up on {local.get('listen')}"
        else:
            source = "default"
    chosen = cluster.prefix
    if not prefix and chosen == defaults.prefix and local.get("prefix"):
        chosen = local["prefix"]
    return ClusterTarget(EtcdAccess.from_config(cluster, timeout=10.0), chosen, source)
