"""The test etcd: it serves, survives a stop/start and a kill/start with its data, and cleans up."""

from __future__ import annotations

import os

import etcd3
import pytest

from tests.support.etcd import EtcdServer, etcd_binary, etcd_fixture


@pytest.fixture(scope="module")
def server():
    yield from etcd_fixture()


def test_binary_is_found():
    assert os.access(etcd_binary(), os.X_OK)


def test_serves_puts_and_gets(server):
    assert server.running
    assert server.endpoint == f"http://127.0.0.1:{server.port}"
    client = server.client()
    client.put("/t/serve", "v1")
    value, meta = client.get("/t/serve")
    assert value == b"v1"
    assert meta.key == b"/t/serve"


def test_stop_then_start_keeps_data_and_endpoint(server):
    client = server.client()
    client.put("/t/stop", "kept")
    endpoint, pid = server.endpoint, server.pid
    assert server.stop() == -15  # etcd re-raises SIGTERM after a clean shutdown
    assert not server.running
    with pytest.raises(etcd3.exceptions.ConnectionFailedError):
        client.get("/t/stop")
    server.start()
    assert server.running and server.pid != pid
    assert server.endpoint == endpoint
    # The same client works again: its failed-endpoint window is zero.
    assert client.get("/t/stop")[0] == b"kept"


def test_kill_then_start_keeps_data(server):
    client = server.client()
    client.put("/t/kill", "survives")
    assert server.kill() == -9
    assert not server.running
    server.start()
    assert client.get("/t/kill")[0] == b"survives"


def test_close_removes_process_and_data_dir():
    server = EtcdServer().start()
    data_dir, proc_pid = server.data_dir, server.pid
    server.client().put("/t/x", "1")
    assert os.path.isdir(data_dir)
    server.close()
    assert not server.running
    assert not os.path.exists(data_dir)
    with pytest.raises(ProcessLookupError):
        os.kill(proc_pid, 0)


def test_start_is_idempotent_while_running(server):
    pid = server.pid
    assert server.start() is server
    assert server.pid == pid
