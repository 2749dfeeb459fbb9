"""How every command finds the cluster it talks to.

Commands read the nodes' own configuration (``cluster.config.load_config``):
a ``--config`` file or ``$SIPCLUSTER_CONFIG``, then the
``SIPCLUSTER_CLUSTER_*`` environment variables, so an operator's shell or a
Kubernetes pod reaches a TLS etcd with auth exactly as the nodes do
(``etcd_ca``, ``etcd_cert``, ``etcd_key``, ``etcd_user``, ``etcd_password``).

Endpoints, in order: an explicit ``--etcd``; ``SIPCLUSTER_CLUSTER_ETCD`` or
the config file; the discovery file that ``sipcluster up`` writes on this
machine; finally etcd on 127.0.0.1:2379. The prefix follows the same order
(``--prefix``, ``SIPCLUSTER_CLUSTER_PREFIX`` or the file, the discovery
file, ``/sipcluster``).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from .config import ClusterConfig, load_config
from .coordination.connection import EtcdAccess

DEFAULT_ETCD = "http://127.0.0.1:2379"
DEFAULT_PREFIX = "/sipcluster"


def state_dir() -> Path:
    """Where ``sipcluster up`` keeps its discovery file."""
    configured = os.environ.get("SIPCLUSTER_STATE_DIR")
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / f"sipcluster-{os.getuid()}"


def discovery_file() -> Path:
    return state_dir() / "up.json"


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
                 *, env: Mapping[str, str] | None = None) -> ClusterTarget:
    """The cluster a command talks to; ``cluster.config.ConfigError`` for an
    unusable configuration (naming the field)."""
    env = os.environ if env is None else env
    loaded = load_config(config, env=env, overrides={"cluster.etcd": etcd, "cluster.prefix": prefix})
    cluster = loaded.cluster
    local = {}
    path = discovery_file()
    if path.exists():
        try:
            local = json.loads(path.read_text())
        except (OSError, ValueError):
            local = {}
    defaults = ClusterConfig()
    if etcd:
        source = "--etcd"
    elif cluster.etcd != defaults.etcd:
        source = "configuration"
    elif local.get("etcd"):
        cluster, source = ClusterConfig(etcd=(local["etcd"],), prefix=cluster.prefix), str(path)
    else:
        source = "default"
    chosen = cluster.prefix
    if not prefix and chosen == defaults.prefix and local.get("prefix"):
        chosen = local["prefix"]
    return ClusterTarget(EtcdAccess.from_config(cluster, timeout=10.0), chosen, source)
