"""The drills' simulated hosts (ops/drills/topology.py): namespaces and veths
named with the runner's pid, reachable from each other only, and removed on
any exit, SIGTERM included."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from ops.drills.topology import Topology, leftovers
from tests.e2e.harness import wait_for

ROOT = Path(__file__).resolve().parents[2]
RECEIVE = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('{}', 9999)); "
           "s.settimeout(30); print(s.recvfrom(100)[1][0])")
SEND = "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'hi', ('{}', 9999))"


def test_hosts_reach_each_other_on_private_addresses_and_are_removed(tmp_path):
    topology = Topology({"a": 1, "b": 2}, resolver="a").up()
    try:
        assert topology.tag == f"d{os.getpid()}"
        assert sorted(leftovers(topology.tag)) == [f"{topology.tag}-a", f"{topology.tag}-b", f"{topology.tag}-hub"]
        listener = topology.spawn("b", [sys.executable, "-c", RECEIVE.format(topology.address("b"))],
                                  log=tmp_path / "received")
        wait_for(lambda: topology.run("b", ["ss", "-Hlun"]).stdout.count(":9999") == 1, timeout=30,
                 what="listener")
        topology.run("a", [sys.executable, "-c", SEND.format(topology.address("b"))])
        assert listener.wait(30) == 0
        assert (tmp_path / "received").read_text().strip() == topology.address("a")
        # The host's resolver is the named host (dnsmasq in the drills).
        resolv = topology.run("b", ["cat", "/etc/resolv.conf"]).stdout
        assert resolv.strip() == f"nameserver {topology.address('a')}"
        # No interface of the drill appears in the machine's own namespace.
        assert not any(topology.tag[1:] in line for line in
                       subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout.splitlines())
        sleeper = topology.spawn("a", ["sleep", "300"])
    finally:
        topology.down()
    assert leftovers(topology.tag) == []
    assert sleeper.poll() is not None
    assert not Path(f"/etc/netns/{topology.tag}-a").exists()


def test_sigterm_of_the_runner_removes_its_namespaces_and_processes(tmp_path):
    script = textwrap.dedent("""
        import sys, time
        from ops.drills.topology import Topology, cleanup_on_exit
        t = Topology({"x": 1, "y": 2}).up()
        cleanup_on_exit(t)
        p = t.spawn("x", ["sleep", "300"])
        print(t.tag, p.pid, flush=True)
        time.sleep(300)
    """)
    runner = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert runner.stdout is not None
        tag, sleeper = runner.stdout.readline().split()
        assert tag == f"d{runner.pid}"
        assert len(leftovers(tag)) == 3
        runner.send_signal(signal.SIGTERM)
        runner.wait(60)
        wait_for(lambda: leftovers(tag) == [], timeout=30, what="namespaces removed")
        # The process started inside a host is gone too (not left to init).
        assert not Path(f"/proc/{sleeper}").exists()
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()

