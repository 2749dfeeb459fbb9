"""`sipcluster up` links its nodes over Unix sockets when the path allows."""

from __future__ import annotations

from cluster.config import load_config
from cluster.local import IPC_PATH_MAX, LocalCluster, UpOptions


def _cluster(workdir) -> LocalCluster:
    cluster = LocalCluster(UpOptions(1, 1, "127.0.0.1", 5060, "http://127.0.0.1:2379", ["localhost"],
                                     "/sipcluster", None, None))
    cluster.workdir = workdir
    return cluster


def _config(path):
    return load_config(path, env={})


def test_links_are_unix_sockets_in_the_state_dir(tmp_path):
    cluster = _cluster(tmp_path)
    worker = _config(cluster._node_config("worker", 1))
    edge = _config(cluster._node_config("edge", 1))
    assert worker.worker.link == f"ipc://{tmp_path / 'worker-1.link'}"
    assert edge.edge.link == f"ipc://{tmp_path / 'edge-1.link'}"


def test_a_path_too_long_for_a_unix_socket_falls_back_to_loopback_tcp(tmp_path):
    deep = tmp_path / ("d" * (IPC_PATH_MAX + 1))
    deep.mkdir()
    worker = _config(_cluster(deep)._node_config("worker", 1))
    assert worker.worker.link == "tcp://127.0.0.1:0"
