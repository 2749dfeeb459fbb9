"""How commands find a cluster that `sipcluster up` runs on this machine:
one record per cluster, named by its listen address; several need a choice."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cluster.discovery import ClusterNotFound, discovery_file, find_cluster, running_clusters
from tests.e2e.harness import ROOT


@pytest.fixture
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("SIPCLUSTER_STATE_DIR", str(tmp_path))
    for key in list(os.environ):
        if key.startswith("SIPCLUSTER_CLUSTER_") or key == "SIPCLUSTER_CONFIG":
            monkeypatch.delenv(key)
    return tmp_path


@pytest.fixture
def other_process():
    """A live process that is not this one, to own a second record."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield process.pid
    process.kill()
    process.wait()


def _record(listen: str, etcd: str, pid: int, prefix: str = "/sipcluster") -> None:
    path = discovery_file(listen)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"etcd": etcd, "prefix": prefix, "listen": listen, "pid": pid}))


def test_one_running_cluster_is_found_without_flags(state):
    _record("127.0.0.1:5060", "http://127.0.0.1:23790", os.getpid(), "/one")
    target = find_cluster()
    assert target.etcd == "http://127.0.0.1:23790" and target.prefix == "/one"
    assert "127.0.0.1:5060" in target.source


def test_two_clusters_have_two_records_and_a_command_must_choose(state, other_process):
    _record("127.0.0.1:5060", "http://127.0.0.1:23790", os.getpid())
    _record("[::1]:5070", "http://127.0.0.1:23791", other_process)
    assert discovery_file("127.0.0.1:5060") != discovery_file("[::1]:5070")
    assert [r["listen"] for r in running_clusters()] == ["127.0.0.1:5060", "[::1]:5070"]
    with pytest.raises(ClusterNotFound) as error:
        find_cluster()
    assert "127.0.0.1:5060" in str(error.value) and "[::1]:5070" in str(error.value)
    assert find_cluster(cluster_listen="[::1]:5070").etcd == "http://127.0.0.1:23791"
    assert find_cluster(cluster_listen="127.0.0.1:5060").etcd == "http://127.0.0.1:23790"
    # An explicit etcd needs no choice.
    assert find_cluster("http://127.0.0.1:23999").etcd == "http://127.0.0.1:23999"


def test_unknown_listen_address_is_refused_naming_what_runs(state):
    _record("127.0.0.1:5060", "http://127.0.0.1:23790", os.getpid())
    with pytest.raises(ClusterNotFound, match=r"127\.0\.0\.9:5060.*running here: 127\.0\.0\.1:5060"):
        find_cluster(cluster_listen="127.0.0.9:5060")


def test_records_of_processes_that_are_gone_are_ignored(state):
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    _record("127.0.0.1:5060", "http://127.0.0.1:23790", int(done.stdout))
    _record("127.0.0.1:5070", "http://127.0.0.1:23791", os.getpid())
    assert find_cluster().etcd == "http://127.0.0.1:23791"


def test_status_with_two_clusters_says_so_and_exits_2(state, other_process):
    _record("127.0.0.1:5060", "http://127.0.0.1:23790", os.getpid())
    _record("127.0.0.1:5070", "http://127.0.0.1:23791", other_process)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIPCLUSTER_")}
    env["SIPCLUSTER_STATE_DIR"] = str(state)
    done = subprocess.run([sys.executable, "-m", "cluster.cli", "status"], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=60)
    assert done.returncode == 2
    assert "2 clusters" in done.stderr and "--cluster HOST:PORT" in done.stderr
