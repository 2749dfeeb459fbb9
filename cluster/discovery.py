"""How every command finds the cluster it talks to.

Order: an explicit ``--etcd``; the ``SIPCLUSTER_CLUSTER_ETCD`` environment
variable; the discovery file that ``sipcluster up`` writes on this machine;
finally etcd on 127.0.0.1:2379. The prefix follows the same order
(``--prefix``, ``SIPCLUSTER_CLUSTER_PREFIX``, the file, ``/sipcluster``).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

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
    etcd: str
    prefix: str
    source: str

    @property
    def host_port(self) -> tuple[str, int]:
        parts = urlsplit(self.etcd if "://" in self.etcd else f"http://{self.etcd}")
        return parts.hostname or "127.0.0.1", parts.port or 2379


def find_cluster(etcd: str | None = None, prefix: str | None = None) -> ClusterTarget:
    local = {}
    path = discovery_file()
    if path.exists():
        try:
            local = json.loads(path.read_text())
        except (OSError, ValueError):
            local = {}
    if etcd:
        source = "--etcd"
    elif os.environ.get("SIPCLUSTER_CLUSTER_ETCD"):
        etcd, source = os.environ["SIPCLUSTER_CLUSTER_ETCD"].split(",")[0], "environment"
    elif local.get("etcd"):
        etcd, source = local["etcd"], str(path)
    else:
        etcd, source = DEFAULT_ETCD, "default"
    prefix = (prefix or os.environ.get("SIPCLUSTER_CLUSTER_PREFIX") or local.get("prefix")
              or DEFAULT_PREFIX)
    return ClusterTarget(etcd, prefix, source)
