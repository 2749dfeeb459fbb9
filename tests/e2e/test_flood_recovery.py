"""Recovery from a flood end to end (issue 19 part 4): one ``sipcluster up``
(two workers, real etcd, ``edge.rate_limit`` on) takes a short OPTIONS flood
from two loopback sources, sent by ``ops/bench/flood.py``'s senders, while a
client on another address (127.0.0.1) keeps probing with OPTIONS and INVITEs.

What must hold: the probes are answered during the flood; within 2 s of the
flood's end an OPTIONS and an INVITE are answered again (the target of the
issue: legitimate calls complete again within 2 s of a flood's end); each
flooding source is banned within 2 s of the flood's start, listed by
``sipcluster bans list``, and what it sent after that is a counted drop.
The full-size measurement (50,000 datagrams/s, SIPp calls) is the benchmark
itself; this is the bounded version for the suite.
"""

from __future__ import annotations

import json
import time

import pytest

from ops.bench.flood import Flood

from .harness import SipAgent, UpCluster, options, probe_call, wait_for
from .test_overload import metric

pytestmark = pytest.mark.e2e

FLOODERS = ("127.0.0.141", "127.0.0.142")
RATE = 10_000  # datagrams/s from both: what this shared 2-core machine sustains beside the cluster
SECONDS = 4.0
RATE_LIMIT, RATE_BURST, BAN_TIME = 200, 400, 300
TARGET = 2.0


@pytest.fixture(scope="module")
def cluster(etcd_server, tmp_path_factory):
    up = UpCluster(tmp_path_factory.mktemp("flood"), workers=2, etcd=etcd_server.endpoint, env={
        "SIPCLUSTER_EDGE_RATE_LIMIT": str(RATE_LIMIT), "SIPCLUSTER_EDGE_RATE_BURST": str(RATE_BURST),
        "SIPCLUSTER_EDGE_RATE_BAN_TIME": str(BAN_TIME),
    }).start()
    try:
        wait_for(lambda: options(up.port)[0] == 200, timeout=60, what="the cluster answers")
        yield up
    finally:
        up.stop()


def invite(cluster: UpCluster, callee: SipAgent, timeout: float = 10.0) -> int:
    """An INVITE relayed by IP to ``callee``, which answers 486: the final status (0: none)."""
    return probe_call(cluster.port, "svc", callee, domain=f"127.0.0.1:{callee.port}", timeout=timeout)[0]


def test_probes_answered_during_an_options_flood_and_within_2s_after(cluster):
    with SipAgent() as callee:
        # Both workers in the ring and past their start-up (a worker still
        # catching up answers 503 with Retry-After).
        wait_for(lambda: len(cluster.worker_pids()) == 2, timeout=60, what="both workers in the ring")
        wait_for(lambda: invite(cluster, callee) == 486, timeout=60, what="an INVITE relayed before the flood")
        banned_before = metric(cluster, "edge", "sipcluster_drops_total", reason="banned")
        flood = Flood("options", FLOODERS, ("127.0.0.1", cluster.port), rate=RATE, seconds=SECONDS,
                      processes=2).start()
        try:
            wait_for(lambda: time.time() > flood.started + 0.5, timeout=30, what="the flood under way")
            answered = asked = 0
            invites: list[int] = []
            while time.time() < flood.started + SECONDS - 1.0:
                asked += 1
                answered += options(cluster.port, timeout=1.0)[0] == 200
                invites.append(invite(cluster, callee, timeout=5.0))
            result = flood.wait()
        finally:
            flood.stop()
        assert result.rate >= 0.9 * RATE, result
        assert asked >= 2 and answered >= 0.8 * asked, (answered, asked)
        # Every INVITE answered; relayed to the callee (486) but for a rare
        # 503 with Retry-After from a worker that fell behind on this
        # shared machine (overload control doing its job, not the flood
        # getting through).
        assert invites and all(status in (486, 503) for status in invites), invites
        assert invites.count(486) >= 0.8 * len(invites), invites
        # Answered again within 2 s of the flood's end (the probes' own
        # round trips included).
        options_back = wait_for(lambda: time.time() if options(cluster.port, timeout=0.5)[0] == 200 else None,
                                timeout=30, interval=0.0, what="an OPTIONS answered after the flood")
        invite_back = wait_for(lambda: time.time() if invite(cluster, callee, timeout=5.0) == 486 else None,
                               timeout=30, interval=0.0, what="an INVITE relayed after the flood")
        assert options_back - result.ended < TARGET, options_back - result.ended
        assert invite_back - result.ended < TARGET, invite_back - result.ended

    listed = cluster.cli("bans", "list", "--json", "--etcd", cluster.etcd)
    assert listed.returncode == 0, listed.stderr
    bans = {b["subject"]: b for b in json.loads(listed.stdout)}
    for source in FLOODERS:
        assert source in bans and bans[source]["reason"] == "rate", (source, bans)
        lag = bans[source]["until"] - BAN_TIME - result.started
        assert lag < TARGET, (source, lag)
    # Past its burst, what each source sent was dropped as banned (or by the
    # kernel while the edge was busy, which the edge counts too).
    dropped = metric(cluster, "edge", "sipcluster_drops_total", reason="banned") - banned_before
    assert dropped >= 0.5 * result.sent, (dropped, result.sent)
