"""Destination sets end to end: a real cluster (separate processes, a real
etcd) relays foreign calls from a trusted network to a set of two gateways
(SIP agents on loopback): probed with OPTIONS by one worker per member,
health shared through etcd and shown by ``sipcluster dispatcher list``, a
503 moving the call to the next gateway within the call, and a gateway that
stops answering marked down and skipped."""

from __future__ import annotations

import json
import threading
import uuid

import pytest

from cluster.sip import Request

from .harness import SipAgent, UpCluster, wait_for


class Gateway(SipAgent):
    """A gateway on loopback: answers OPTIONS 200 while ``alive``, INVITE with
    ``invite_status``; every request it got is kept in ``requests``."""

    def __init__(self, invite_status: int) -> None:
        super().__init__()
        self.invite_status = invite_status
        self.alive = True
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def uri(self) -> str:
        return f"sip:{self.host}:{self.port}"

    def _serve(self) -> None:
        while not self.stopped.is_set():
            message, source = self.receive(lambda m: isinstance(m, Request), timeout=0.2)
            if message is None:
                continue
            with self.lock:
                self.requests.append(message)
            if message.method == "OPTIONS" and self.alive:
                self.answer(message, 200, source)
            elif message.method == "INVITE":
                self.answer(message, self.invite_status, source)

    def got(self, method: str) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.method == method]

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(5)
        super().close()


@pytest.fixture(scope="module")
def gateways():
    busy, good = Gateway(503), Gateway(200)
    yield busy, good
    busy.close()
    good.close()


@pytest.fixture(scope="module")
def cluster(etcd_server, tmp_path_factory, gateways):
    up = UpCluster(tmp_path_factory.mktemp("dispatch"), workers=2, etcd=etcd_server.endpoint, env={
        "SIPCLUSTER_DISPATCHER_FOREIGN_SET": "carriers",
        "SIPCLUSTER_DISPATCHER_PROBE_INTERVAL": "0.5",
        "SIPCLUSTER_DISPATCHER_PROBE_TIMEOUT": "1",
        "SIPCLUSTER_DISPATCHER_PROBE_DOWN_AFTER": "2",
        "SIPCLUSTER_DISPATCHER_PROBE_UP_AFTER": "1",
    }).start()
    try:
        first, second = gateways
        for gateway, priority in ((first, 0), (second, 1)):
            result = up.cli("dispatcher", "add", "carriers", gateway.uri, "--priority", str(priority),
                            "--etcd", up.etcd)
            assert result.returncode == 0, result.stderr
        yield up
    finally:
        up.stop()


def members(cluster) -> dict[str, dict]:
    result = cluster.cli("dispatcher", "list", "--json", "--etcd", cluster.etcd)
    assert result.returncode == 0, result.stderr
    (dset,) = json.loads(result.stdout)
    return {m["uri"]: m for m in dset["members"]}


def call(cluster, caller: SipAgent):
    invite = caller.request("INVITE", "sip:carol@carrier.test", call_id=uuid.uuid4().hex, cseq=1,
                            from_="sip:pbx@pbx.test", to="sip:carol@carrier.test")
    return caller.transact(invite, cluster.port, timeout=20)


def test_each_member_is_probed_by_one_worker_and_its_health_is_listed(cluster, gateways):
    first, second = gateways
    wait_for(lambda: all(m["health"] == "up" for m in members(cluster).values()), timeout=60,
             what="both gateways probed and up")
    probers = {m["probed_by"] for m in members(cluster).values()}
    assert probers <= set(cluster.worker_pids()), probers
    wait_for(lambda: len(first.got("OPTIONS")) >= 6, timeout=60, what="several probes")
    shards = {dict(r.via.params).get("wk") for r in first.got("OPTIONS")}
    assert len(shards) == 1, f"one worker probes a member, not every worker: {shards}"


def test_a_503_fails_over_to_the_next_gateway_within_the_call(cluster, gateways):
    first, second = gateways
    wait_for(lambda: members(cluster)[first.uri]["health"] == "up", timeout=60, what="first gateway up")
    before_first, before_second = len(first.got("INVITE")), len(second.got("INVITE"))
    with SipAgent() as caller:
        response = call(cluster, caller)
    assert response is not None and response.status == 200, response
    (tried,) = first.got("INVITE")[before_first:]
    (answered,) = second.got("INVITE")[before_second:]
    assert str(tried.uri) == f"sip:carol@{first.host}:{first.port}", "the callee's user is kept"
    assert tried.call_id == answered.call_id
    assert tried.via.branch != answered.via.branch, "a new client transaction for the next member"


def test_a_gateway_that_stops_answering_is_marked_down_and_skipped(cluster, gateways):
    first, second = gateways
    first.alive = False
    try:
        wait_for(lambda: members(cluster)[first.uri]["health"] == "down", timeout=60,
                 what="the silent gateway marked down")
        assert members(cluster)[first.uri]["last_status"] is None, "a timeout, never alive"
        before_first = len(first.got("INVITE"))
        # Every worker routes by the shared health: several calls, none to it.
        with SipAgent() as caller:
            for _ in range(4):
                response = call(cluster, caller)
                assert response is not None and response.status == 200
        assert len(first.got("INVITE")) == before_first
    finally:
        first.alive = True
    wait_for(lambda: members(cluster)[first.uri]["health"] == "up", timeout=60, what="back up")
