"""Failover in the runtime (issue 18): `sipcluster up` as separate processes,
real etcd, SIPp calls with a hold time, a node killed or stalled mid-run.

Each test leaves the cluster as it found it (the supervisor restarts a
killed worker; a stopped one is continued), waiting for two workers again.
"""

from __future__ import annotations

import os
import signal

import pytest

from tests.e2e.harness import Sipp, UpCluster, bound, wait_for
# The module's own cluster (two workers, alice), location sync and phone:
# the fixtures of the calls tests, instantiated again for this module (the
# tests name them as parameters, which ruff takes for redefinitions).
# ruff: noqa: F811
from tests.e2e.test_calls import Phone, cluster, locations, phone, received  # noqa: F401

pytestmark = pytest.mark.e2e

CALLS = 40


def edge_status(cluster: UpCluster) -> dict:
    return next(m["status"] or {} for m in cluster.status()["members"] if m["role"] == "edge")


def acks(sipp: Sipp) -> int:
    return sum(1 for line in received(sipp) if line.startswith("ACK "))


def held_calls(phone: Phone, name: str, *, hold_ms: int) -> tuple[Sipp, Sipp]:
    """CALLS calls from alice to a new user at 20 calls/s, each held
    ``hold_ms`` then hung up by the caller; returns (caller, callee) started."""
    user = phone.user(name)
    uas = Sipp("uas_answer.xml", phone.workdir, name=f"{name}-uas", sets={"cluster": phone.remote},
               timeout=60, args=["-m", str(CALLS)])
    phone.started.append(uas.start())
    wait_for(lambda: bound(uas.port) or uas.process.poll() is not None, timeout=20,
             what="callee listening")
    assert uas.process.poll() is None, uas.report()
    phone.register(user, uas.port)
    uac = phone.caller("uac.xml", user, name=f"{name}-uac",
                       args=["-m", str(CALLS), "-r", "20", "-l", str(CALLS), "-d", str(hold_ms)])
    uac.start()
    return uac, uas


def test_kill_9_of_a_worker_loses_no_established_call(phone, cluster):
    """Issue 18.1: 40 calls established over two workers; one worker is
    killed; every BYE (sent 1-3 s later, before the dead worker's lease
    expires) is answered 200 by the callee through the surviving worker.
    Before: the edge answered the dead worker's BYEs 503 "worker link
    unavailable" until the lease expired."""
    uac, uas = held_calls(phone, "failbob", hold_ms=4000)
    wait_for(lambda: acks(uas) >= CALLS or uac.process.poll() is not None, timeout=60,
             what="all calls established")
    assert acks(uas) == CALLS, phone.report()
    victim, pid = sorted(cluster.worker_pids().items())[0]
    suspects_before = edge_status(cluster)["stats"].get("link_suspect", 0)
    os.kill(pid, signal.SIGKILL)
    phone.check(uac, uas)
    assert [line.split()[0] for line in received(uas)].count("BYE") == CALLS
    stats = edge_status(cluster)["stats"]
    # The edge saw the link drop (not only the lease expire) and sent the
    # dead worker's BYEs to the survivor.
    assert stats.get("link_suspect", 0) > suspects_before, stats
    assert not any("503" in line for line in received(uac)), received(uac)
    wait_for(lambda: cluster.worker_pids().get(victim) not in (None, pid), timeout=60,
             what="killed worker restarted")
    wait_for(lambda: len(cluster.worker_pids()) == 2, timeout=60, what="two workers again")
