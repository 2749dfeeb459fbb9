"""Calls to a carrier found by DNS (RFC 3263), end to end: ``sipcluster up``
with ``SIPCLUSTER_DNS_SERVERS`` pointing every worker at a dnsmasq on a
loopback port, whose SRV records for ``carrier.test`` name two SIPp UASs.
One UAS is killed mid-run: the calls that try it fail over to the other
(Timer B, then the dead one is blocked), and at least 99 % complete. A name
that does not exist is answered 480 with a Warning, not a bare 404. A UA
registered over TCP with a named Contact is reached there, located by DNS,
once its connection has closed."""

from __future__ import annotations

import csv
import socket
import time
import uuid

import pytest

from cluster.sip import Request, StreamFramer, make_response, parse_message
from tests.e2e.harness import LocationSync, SipAgent, Sipp, UpCluster, bound, free_port_pair, wait_for
from tests.e2e.test_outbound import TcpFlow, closed, register_flow
from tests.support.dns import Dnsmasq, FakeDns

CALLS = 400
RATE = 40


@pytest.fixture(scope="module")
def carrier():
    ports = free_port_pair(), free_port_pair()
    while ports[1] == ports[0]:
        ports = ports[0], free_port_pair()
    # Zones dnsmasq forwards to broken servers: one never answers, one
    # answers SERVFAIL, one garbage, one a CNAME loop, one an answer of
    # thousands of records (too large for UDP, and no TCP to retry on).
    broken = {mode: FakeDns(mode, **({"records": 5000} if mode == "many" else {})).start()
              for mode in ("silent", "servfail", "garbage", "cname-loop", "many")}
    server = Dnsmasq([
        f"server=/silent.test/127.0.0.1#{broken['silent'].port}",
        f"server=/broken.test/127.0.0.1#{broken['servfail'].port}",
        f"server=/garbage.test/127.0.0.1#{broken['garbage'].port}",
        f"server=/loop.test/127.0.0.1#{broken['cname-loop'].port}",
        f"server=/many.test/127.0.0.1#{broken['many'].port}",
        "local-ttl=300",
        f"srv-host=_sip._udp.carrier.test,uas1.carrier.test,{ports[0]},0,50",
        f"srv-host=_sip._udp.carrier.test,uas2.carrier.test,{ports[1]},0,50",
        "host-record=uas1.carrier.test,127.0.0.1",
        "host-record=uas2.carrier.test,127.0.0.1",
        "host-record=ken.phones.test,127.0.0.1",
    ]).start()
    yield server, ports
    server.close()
    for fake in broken.values():
        fake.close()


@pytest.fixture(scope="module")
def cluster(etcd_server, carrier, tmp_path_factory):
    server, _ = carrier
    # T1 = 0.1 s: Timer B (64·T1) ends a try of the dead UAS after 6.4 s.
    up = UpCluster(tmp_path_factory.mktemp("dns"), workers=2, etcd=etcd_server.endpoint,
                   env={"SIPCLUSTER_DNS_SERVERS": server.server, "SIPCLUSTER_WORKER_T1": "0.1",
                        "SIPCLUSTER_DNS_TIMEOUT": "1", "SIPCLUSTER_DNS_LIFETIME": "2"}).start()
    wait_for(lambda: len(up.worker_pids()) == 2, what="two workers in the ring")
    yield up
    up.stop()


def uas(tmp_path, name: str, port: int) -> Sipp:
    sipp = Sipp("uas.xml", tmp_path, name=name, port=port, timeout=120, args=["-m", "100000"]).start()
    wait_for(lambda: bound(port) or sipp.process.poll() is not None, timeout=20, what=f"{name} listening")
    assert sipp.process.poll() is None, sipp.report()
    return sipp


def invites(sipp: Sipp) -> int:
    return sipp.messages().count("INVITE sip:carol@carrier.test")


def test_calls_to_carrier_survive_one_of_its_two_servers_dying(cluster, carrier, tmp_path):
    _, ports = carrier
    one, two = uas(tmp_path, "uas1", ports[0]), uas(tmp_path, "uas2", ports[1])
    stats = tmp_path / "uac.stat.csv"
    uac = Sipp("uac_carrier.xml", tmp_path, name="uac", remote=f"127.0.0.1:{cluster.port}", timeout=150,
               keys={"domain": "carrier.test", "caller_domain": "caller.test"},
               args=["-s", "carol", "-m", str(CALLS), "-r", str(RATE), "-l", str(CALLS),
                     "-trace_stat", "-stf", str(stats), "-fd", "1", "-max_recv_loops", "1000"])
    try:
        uac.start()
        # Both servers take calls (RFC 2782 weights 50/50) before one dies.
        wait_for(lambda: invites(one) >= 20 and invites(two) >= 20, timeout=60,
                 what="calls reaching both UASs")
        two.stop()
        code = uac.wait(200)
        with stats.open() as f:
            rows = list(csv.DictReader(f, delimiter=";"))
        succeeded = int(rows[-1]["SuccessfulCall(C)"])
        failed = int(rows[-1]["FailedCall(C)"])
        assert succeeded + failed == CALLS, uac.report()
        assert succeeded >= 0.99 * CALLS, (code, succeeded, failed, uac.report() + cluster.logs())
        assert invites(one) > CALLS // 2, "the survivor took the rest"
        metrics = "".join(_metrics(cluster))
        assert 'sipcluster_dns_events_total{event="destination_blocked"}' in metrics
        assert 'sipcluster_dns_events_total{event="failover"}' in metrics
    finally:
        for sipp in (uac, one, two):
            sipp.stop()


def test_a_name_that_does_not_exist_is_480_with_a_warning(cluster):
    with SipAgent() as agent:
        invite = agent.request("INVITE", "sip:carol@nobody.carrier.test", call_id="dns-nx-1",
                               cseq=1, from_="sip:caller@caller.test", to="sip:carol@nobody.carrier.test",
                               headers=[("Contact", f"<{agent.contact}>")])
        response = agent.transact(invite, cluster.port, timeout=20)
    assert response is not None and response.status == 480, response
    warning = response.get("warning") or ""
    assert warning.startswith("399 ") and "cannot resolve nobody.carrier.test" in warning, warning


@pytest.mark.parametrize("host, reason", [
    ("x.silent.test", "timeout"), ("x.broken.test", "servfail"),
    # The bad answers of the "Bad input": each a documented 504.
    ("x.garbage.test", None), ("x.loop.test", None), ("x.many.test", None),
])
def test_a_dns_server_that_fails_is_504_with_a_warning_within_the_lifetime(cluster, host, reason):
    started = time.monotonic()
    with SipAgent() as agent:
        invite = agent.request("INVITE", f"sip:carol@{host}", call_id=f"dns-{host}-1", cseq=1,
                               from_="sip:caller@caller.test", to=f"sip:carol@{host}",
                               headers=[("Contact", f"<{agent.contact}>")])
        response = agent.transact(invite, cluster.port, timeout=30)
    took = time.monotonic() - started
    assert response is not None and response.status == 504, response
    warning = response.get("warning") or ""
    assert f"DNS lookup for {host} failed" in warning, warning
    if reason == "servfail":
        assert "servfail" in warning, warning
    # dns.lifetime is 2 s here: one location, all its lookups, then the answer.
    assert took < 2 + 8, took
    metrics = "".join(_metrics(cluster))
    assert 'sipcluster_unroutable_total{code="504"}' in metrics


def test_a_named_contact_registered_over_tcp_is_located_once_the_connection_closed(cluster):
    """RFC 3261 §18.2.2 and RFC 3263: the edge writes on the registration's
    connection while it is open; after it has closed, it connects to the
    Contact, whose name (ken.phones.test) the worker locates."""
    password = uuid.uuid4().hex
    cluster.user("add", "ken@localhost", password=password)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    sync = LocationSync(cluster)
    flow = TcpFlow(cluster.port)
    try:
        # A plain TCP registration (no RFC 5626 outbound): no reg-id.
        register_flow(flow, "ken", password, contact=f"<sip:ken@ken.phones.test:{port};transport=tcp>")
        closed(cluster, flow)
        sync.wait()
        with SipAgent() as caller:
            invite = caller.request("INVITE", "sip:ken@localhost", call_id=f"dns-tcp-{uuid.uuid4().hex}",
                                    cseq=1, from_="sip:carrier@example.org", to="sip:ken@localhost",
                                    headers=[("Contact", caller.contact)])
            caller.send(invite, cluster.port)
            listener.settimeout(20)
            conn, _ = listener.accept()
            with conn:
                reached = _read_request(conn, invite.call_id)
                assert reached is not None and reached.method == "INVITE", reached
                assert str(reached.uri) == f"sip:ken@ken.phones.test:{port};transport=tcp"
                conn.sendall(make_response(reached, 486, to_tag="busy").to_bytes())
                final = caller.transact(invite, cluster.port, timeout=20)
        assert final is not None and final.status == 486, final
    finally:
        listener.close()
        sync.close()
    metrics = "".join(_metrics(cluster))
    assert 'sipcluster_dns_events_total{event="located"}' in metrics


def _read_request(conn: socket.socket, call_id: str, timeout: float = 20.0) -> Request | None:
    framer = StreamFramer()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conn.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            data = conn.recv(65536)
        except TimeoutError:
            continue
        if not data:
            return None
        for raw in framer.feed(data):
            message = parse_message(raw)
            if isinstance(message, Request) and message.call_id == call_id:
                return message
    return None


def _metrics(cluster: UpCluster) -> list[str]:
    import urllib.request
    out = []
    for member in cluster.status()["members"]:
        if member["role"] == "worker" and member.get("http"):
            with urllib.request.urlopen(f"{member['http']}/metrics", timeout=10) as response:
                out.append(response.read().decode())
    return out
