"""Calls through the cluster with real SIP clients (issue 5 item 8).

One ``sipcluster up`` (two workers, real etcd) serves the module. Each test
uses its own users and SIPp processes on their own loopback ports: callees
are SIPp UAS scenarios registered with ``register.xml``, the caller is a
SIPp UAC authenticated as alice. SIPp 3.6 answers only MD5 challenges and
takes the first one, so the cluster offers MD5 only.

The scenarios check the signalling path themselves (``-set cluster``): the
callee fails its call unless the INVITE carries a Record-Route naming the
cluster and every request reaches it through the cluster.
"""

from __future__ import annotations

import os
import re
import signal
import time
import uuid
from pathlib import Path

import pytest

from tests.e2e.harness import (
    LocationSync, SipAgent, Sipp, UpCluster, bound, options, wait_for,
)

pytestmark = pytest.mark.e2e

ENV = {"SIPCLUSTER_WORKER_DIGEST_ALGORITHMS": "MD5"}
# Scenarios that compare what they receive with the cluster's address.
PATH_CHECKING = {"uas_answer.xml", "uas_reinvite.xml", "uac_wait_bye.xml"}


@pytest.fixture(scope="module")
def cluster(etcd_server, tmp_path_factory):
    up = UpCluster(tmp_path_factory.mktemp("calls"), workers=2, etcd=etcd_server.endpoint,
                   env=ENV).start()
    wait_for(lambda: len(up.worker_pids()) == 2, what="two workers in the ring")
    up.user("add", "alice@localhost", password="secretA")
    yield up
    up.stop()


@pytest.fixture(scope="module")
def locations(cluster):
    sync = LocationSync(cluster)
    yield sync
    sync.close()


class Phone:
    """SIPp processes for one test, all talking to ``cluster``."""

    def __init__(self, cluster: UpCluster, locations: LocationSync, workdir: Path) -> None:
        self.cluster = cluster
        self.locations = locations
        self.workdir = workdir
        self.remote = f"127.0.0.1:{cluster.port}"
        self.started: list[Sipp] = []

    def user(self, name: str, **settings) -> str:
        self.cluster.user("add", f"{name}@localhost", password=f"pw-{name}")
        if settings:
            self.cluster.user("set", f"{name}@localhost", *(f"{k}={v}" for k, v in settings.items()))
        return name

    def register(self, user: str, contact_port: int, *, transport: str = "u1") -> None:
        sipp = Sipp("register.xml", self.workdir, name=f"register-{user}-{contact_port}",
                    remote=self.remote, transport=transport, timeout=20,
                    keys={"user": user, "domain": "localhost", "expires": 3600,
                          "contact_host": "127.0.0.1", "contact_port": contact_port},
                    args=["-au", user, "-ap", f"pw-{user}"])
        assert sipp.run() == 0, sipp.report() + self.cluster.logs()
        # Calls look the binding up in each worker's watch-fed cache.
        self.locations.wait()

    def callee(self, scenario: str, *, name: str, transport: str = "u1") -> Sipp:
        sets = {"cluster": self.remote} if scenario in PATH_CHECKING else None
        sipp = Sipp(scenario, self.workdir, name=name, transport=transport, sets=sets,
                    timeout=45, args=["-trace_logs", "-log_file", str(self.workdir / f"{name}.log")])
        self.started.append(sipp.start())
        kind = "tcp" if transport.startswith("t") else "udp"
        wait_for(lambda: bound(sipp.port, kind) or sipp.process.poll() is not None, timeout=20,
                 what=f"SIPp {name} listening")
        assert sipp.process.poll() is None, sipp.report()
        return sipp

    def caller(self, scenario: str, callee: str, *, name: str = "caller", transport: str = "u1",
               keys: dict | None = None, args: list[str] = ()) -> Sipp:
        sets = {"cluster": self.remote} if scenario in PATH_CHECKING else None
        sipp = Sipp(scenario, self.workdir, name=name, remote=self.remote, transport=transport,
                    sets=sets, timeout=45,
                    keys={"domain": "localhost", "caller": "alice", "caller_domain": "localhost",
                          **(keys or {})},
                    args=["-s", callee, "-au", "alice", "-ap", "secretA", "-d", "200",
                          "-trace_logs", "-log_file", str(self.workdir / f"{name}.log"), *args])
        self.started.append(sipp)
        return sipp

    def report(self) -> str:
        return "\n".join(s.report() for s in self.started) + self.cluster.logs()

    def check(self, *sipps: Sipp) -> None:
        for sipp in sipps:
            assert sipp.wait() == 0, f"{sipp.name} failed\n" + self.report()

    def close(self) -> None:
        for sipp in self.started:
            sipp.stop()


@pytest.fixture
def phone(cluster, locations, tmp_path):
    p = Phone(cluster, locations, tmp_path)
    yield p
    p.close()


def sent(sipp: Sipp) -> list[str]:
    """First lines of the messages SIPp sent, in order."""
    return re.findall(r"message sent \(\d+ bytes\):\s*\n\n?(.+)", sipp.messages())


def received(sipp: Sipp) -> list[str]:
    return re.findall(r"message received \[\d+\] bytes :\s*\n\n?(.+)", sipp.messages())


def received_messages(sipp: Sipp) -> list[list[str]]:
    """Each message SIPp received, as its lines."""
    blocks = re.split(r"\n-{20,}[^\n]*\n", sipp.messages())
    return [block.split("\n", 2)[-1].strip().splitlines() for block in blocks
            if "message received" in block.split("\n", 1)[0]]


def test_call_with_record_route_and_bye_through_the_cluster(phone):
    bob = phone.user("bob")
    uas = phone.callee("uas_answer.xml", name="bob")
    phone.register(bob, uas.port)
    uac = phone.caller("uac.xml", bob).start()
    phone.check(uac, uas)
    got = received(uac)
    assert any(line.startswith("SIP/2.0 180") for line in got), got
    assert any(line.startswith("SIP/2.0 200") for line in got), got
    # The caller saw the cluster in the route set of the 200 as well, and
    # only its own Via: the proxy removed its one (§16.7 step 3).
    ok = next(m for m in received_messages(uac) if m[0].startswith("SIP/2.0 200"))
    # Our Record-Route carries the dialog token (sct) its in-dialog requests
    # must bring back.
    assert any(re.fullmatch(rf"Record-Route: <sip:{re.escape(phone.remote)};sct=[\w-]+;lr>", line)
               for line in ok), ok
    vias = [line for line in ok if line.lower().startswith("via:")]
    assert len(vias) == 1 and f":{uac.port};" in vias[0] and "," not in vias[0], ok
    # INVITE, 180, 200, ACK and BYE reached the callee (it checks the path itself).
    assert [line.split()[0] for line in received(uas)] == ["INVITE", "ACK", "BYE"]


def test_cancel_before_answer(phone):
    carl = phone.user("carl")
    uas = phone.callee("uas_ring.xml", name="carl")
    phone.register(carl, uas.port)
    uac = phone.caller("uac_cancel.xml", carl).start()
    phone.check(uac, uas)
    # The callee got the CANCEL and the ACK for its 487; the caller got the
    # 200 for its CANCEL and the 487 (§16.10).
    assert [line.split()[0] for line in received(uas)] == ["INVITE", "CANCEL", "ACK"]
    finals = [line for line in received(uac) if not line.startswith(("SIP/2.0 1", "SIP/2.0 407"))]
    assert [f.split()[1] for f in finals] == ["200", "487"], finals


def test_busy_forwards_to_forward_busy_target(phone):
    erin = phone.user("erin")
    dave = phone.user("dave", forward_busy="sip:erin@localhost")
    busy = phone.callee("uas_busy.xml", name="dave")
    answer = phone.callee("uas_answer.xml", name="erin")
    phone.register(dave, busy.port)
    phone.register(erin, answer.port)
    uac = phone.caller("uac.xml", dave).start()
    phone.check(uac, busy, answer)
    got = received(uac)
    # The failure hook took over: the caller never saw the 486.
    assert not any(line.startswith("SIP/2.0 486") for line in got), got
    assert any(line.startswith("SIP/2.0 200") for line in got), got


def test_no_answer_forwards_after_timeout(phone):
    grace = phone.user("grace")
    frank = phone.user("frank", forward_noanswer="sip:grace@localhost", noanswer_timeout=2)
    ringing = phone.callee("uas_ring.xml", name="frank")
    answer = phone.callee("uas_answer.xml", name="grace")
    phone.register(frank, ringing.port)
    phone.register(grace, answer.port)
    started = time.monotonic()
    uac = phone.caller("uac.xml", frank).start()
    phone.check(uac, ringing)
    elapsed = time.monotonic() - started
    phone.check(answer)
    # frank rang for noanswer_timeout, got CANCEL (it checks), then grace answered.
    assert elapsed >= 1.5, elapsed
    assert [line.split()[0] for line in received(ringing)] == ["INVITE", "CANCEL", "ACK"]
    assert not any(line.startswith("SIP/2.0 487") for line in received(uac))


def test_two_contacts_forked_in_parallel(phone):
    heidi = phone.user("heidi")
    answer = phone.callee("uas_answer.xml", name="heidi-desk")
    ringing = phone.callee("uas_ring.xml", name="heidi-mobile")
    phone.register(heidi, answer.port)
    phone.register(heidi, ringing.port)
    uac = phone.caller("uac.xml", heidi).start()
    # One branch answers; the other must receive a CANCEL (§16.7 step 10).
    phone.check(uac, answer, ringing)
    assert [line.split()[0] for line in received(ringing)] == ["INVITE", "CANCEL", "ACK"]


def test_reinvite_in_dialog(phone):
    ivan = phone.user("ivan")
    uas = phone.callee("uas_reinvite.xml", name="ivan")
    phone.register(ivan, uas.port)
    uac = phone.caller("uac_reinvite.xml", ivan).start()
    phone.check(uac, uas)
    assert [line.split()[0] for line in received(uas)] == ["INVITE", "ACK", "INVITE", "ACK", "BYE"]


def test_bye_from_the_callee(phone):
    judy = phone.user("judy")
    uas = phone.callee("uas_bye.xml", name="judy")
    phone.register(judy, uas.port)
    uac = phone.caller("uac_wait_bye.xml", judy).start()
    phone.check(uac, uas)
    assert "BYE" in [line.split()[0] for line in received(uac)]


def test_call_over_tcp(phone):
    ken = phone.user("ken")
    uas = phone.callee("uas_answer.xml", name="ken", transport="t1")
    phone.register(ken, uas.port, transport="t1")
    uac = phone.caller("uac.xml", ken, transport="t1").start()
    phone.check(uac, uas)
    assert "TCP message received" in uas.messages()
    assert "UDP message" not in uas.messages() + uac.messages()
    # Both legs are TCP, so the route set says so: in-dialog requests stay on TCP.
    assert re.search(rf"Record-Route: <sip:{re.escape(phone.remote)};transport=tcp;sct=[\w-]+;lr>",
                     uas.messages())


def test_kill_9_of_the_call_owner_then_bye_reaches_the_callee(phone, cluster):
    """Last in the module: it kills a worker (``up`` restarts it)."""
    leo = phone.user("leo")
    uas = phone.callee("uas_answer.xml", name="leo")
    phone.register(leo, uas.port)
    established = phone.workdir / "established"
    prefix = f"kill-{uuid.uuid4().hex[:12]}"
    call_id = f"{prefix}-1@127.0.0.1"
    uac = phone.caller("uac_hold.xml", leo, keys={"established": established},
                       args=["-cid_str", f"{prefix}-%u@%s"]).start()
    wait_for(lambda: established.exists() or uac.process.poll() is not None, timeout=45,
             what="call established")
    assert established.exists(), phone.report()
    # The worker that owns the Call-ID handled the call; the cluster names it.
    status, headers = options(cluster.port, call_id)
    assert status == 200
    owner = headers["x-sipcluster-shard"]
    pid = cluster.worker_pids()[owner]
    os.kill(pid, signal.SIGKILL)
    # Wait until the Call-ID is served again (the edge routes around the
    # dead link at once, or the restarted worker is back), then hang up.
    def server() -> str | None:
        status, headers = options(cluster.port, call_id, timeout=0.5)
        return headers.get("x-sipcluster-shard") if status == 200 else None

    shard = wait_for(server, timeout=60, what="Call-ID served again after kill -9")
    # Whoever serves it now, the process that held the dialog is gone.
    assert shard != owner or cluster.worker_pids().get(owner) != pid
    with SipAgent() as trigger:
        info = trigger.request("INFO", f"sip:alice@127.0.0.1:{uac.port}", call_id=call_id, cseq=99,
                               from_="sip:test@127.0.0.1", to="sip:alice@127.0.0.1")
        trigger.send(info, uac.port)
    # The BYE reached the callee through the cluster (uas_answer checks the
    # Via) without the dialog state the dead worker had.
    phone.check(uac, uas)
    assert [line.split()[0] for line in received(uas)] == ["INVITE", "ACK", "BYE"]
