"""Kamailio as a real peer (issue 17.5): one Kamailio as the upstream
carrier proxy in front of the cluster, another as the cluster's outbound
proxy behind it (``worker.outbound_proxy`` by IP:port). Calls both ways
between SIPp agents, each through one Kamailio and the cluster, both
record-routing: the UAs see both proxies' Record-Route in the right order,
the caller's re-INVITE, ACKs and BYE carry the Route set and pass both
proxies (their Vias at the callee, Kamailio's log), and leave no Route
behind at the callee."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .harness import LocationSync, Sipp, UpCluster, bound, free_port_pair, wait_for
from .kamailio import Kamailio

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def carrier(etcd_server, tmp_path_factory):
    """The cluster between two Kamailios, and the port of the carrier's UAS."""
    workdir = tmp_path_factory.mktemp("kamailio")
    carrier_uas = free_port_pair()
    outbound = Kamailio(workdir, "outbound", f"127.0.0.1:{carrier_uas}").start()
    up = UpCluster(workdir, workers=2, etcd=etcd_server.endpoint, env={
        "SIPCLUSTER_WORKER_OUTBOUND_PROXY": f"sip:{outbound.address}",
        "SIPCLUSTER_WORKER_DIGEST_ALGORITHMS": "MD5",
    })
    upstream = Kamailio(workdir, "upstream", f"127.0.0.1:{up.port}").start()
    try:
        up.start()
        wait_for(lambda: len(up.worker_pids()) == 2, what="two workers in the ring")
        yield up, upstream, outbound, carrier_uas
    finally:
        up.stop()
        upstream.stop()
        outbound.stop()


def messages(sipp: Sipp, direction: str) -> list[list[str]]:
    """Each message SIPp sent or received (``direction``), as its lines."""
    blocks = re.split(r"\n-{20,}[^\n]*\n", "\n" + sipp.messages())
    return [block.split("\n", 2)[-1].strip().splitlines() for block in blocks
            if f"message {direction}" in block.split("\n", 1)[0]]


def find(sipp: Sipp, direction: str, first_line: str) -> list[list[str]]:
    return [m for m in messages(sipp, direction) if m and m[0].startswith(first_line)]


def header_ports(message: list[str], name: str) -> list[int]:
    """The ports of the loopback URIs in every ``name`` header, in order."""
    out: list[int] = []
    for line in message:
        if line.lower().startswith(name.lower() + ":"):
            out += [int(p) for p in re.findall(r"<sip:127\.0\.0\.1:(\d+)", line)]
    return out


def via_ports(message: list[str]) -> list[int]:
    out: list[int] = []
    for line in message:
        if line.lower().startswith("via:"):
            out += [int(p) for p in re.findall(r"SIP/2\.0/UDP 127\.0\.0\.1:(\d+)", line)]
    return out


def call_id(message: list[str]) -> str:
    return next(line.split(":", 1)[1].strip() for line in message if line.lower().startswith("call-id:"))


def run_call(workdir: Path, *, uac_remote: str, callee: str, domain: str, caller: str, caller_domain: str,
             uas_port: int, nearest: str, cluster: UpCluster, register: str | None = None) -> tuple[Sipp, Sipp]:
    uas = Sipp("uas_reinvite.xml", workdir, name=f"uas-{callee}", port=uas_port, timeout=45,
               sets={"cluster": nearest})
    uas.start()
    try:
        wait_for(lambda: bound(uas.port) or uas.process.poll() is not None, timeout=20, what="SIPp UAS")
        if register is not None:
            reg = Sipp("register.xml", workdir, name=f"register-{callee}", remote=f"127.0.0.1:{cluster.port}",
                       timeout=20, keys={"user": callee, "domain": "localhost", "expires": 3600,
                                         "contact_host": "127.0.0.1", "contact_port": uas.port},
                       args=["-au", callee, "-ap", register])
            assert reg.run() == 0, reg.report() + cluster.logs()
            sync = LocationSync(cluster, user=f"marker-{callee}")
            try:
                sync.wait()
            finally:
                sync.close()
        uac = Sipp("uac_reinvite.xml", workdir, name=f"uac-{callee}", remote=uac_remote, timeout=45,
                   keys={"domain": domain, "caller": caller, "caller_domain": caller_domain},
                   args=["-s", callee])
        assert uac.run() == 0, uac.report() + uas.report() + cluster.logs()
        assert uas.wait() == 0, uas.report() + cluster.logs()
    finally:
        uas.stop()
    return uac, uas


def check_dialog(uac: Sipp, uas: Sipp, *, near_caller: int, near_callee: int, kamailio: Kamailio) -> None:
    """Both proxies record-routed and the in-dialog requests passed both."""
    (invite, reinvite) = find(uas, "received", "INVITE")
    # The callee sees the Record-Route of the proxy next to it on top (§16.6 step 4).
    assert header_ports(invite, "Record-Route") == [near_callee, near_caller]
    ok = next(m for m in find(uac, "received", "SIP/2.0 200") if any("INVITE" in line for line in m))
    assert header_ports(ok, "Record-Route") == [near_callee, near_caller]
    # The caller's route set is the Record-Route reversed (§12.1.2); every
    # in-dialog request carries it.
    for method in ("INVITE", "ACK", "BYE"):
        for sent in find(uac, "sent", method)[-1:]:
            assert header_ports(sent, "Route") == [near_caller, near_callee], (method, sent)
    (bye,) = find(uas, "received", "BYE")
    for request in (reinvite, bye):
        assert header_ports(request, "Route") == [], "each proxy removed its own Route (§16.12)"
        assert via_ports(request)[:2] == [near_callee, near_caller], "through both proxies"
    saw = kamailio.saw(call_id(invite))
    assert ("INVITE", False) in saw and ("INVITE", True) in saw and ("BYE", True) in saw, saw
    assert ("ACK", True) in saw, saw


def test_a_carrier_call_through_upstream_kamailio_into_the_cluster(carrier, tmp_path):
    cluster, upstream, _, _ = carrier
    cluster.user("add", "ivan@localhost", password="pw-ivan")
    uac, uas = run_call(tmp_path, uac_remote=upstream.address, callee="ivan", domain="localhost",
                        caller="carol", caller_domain="carrier.test", uas_port=free_port_pair(),
                        nearest=f"127.0.0.1:{cluster.port}", cluster=cluster, register="pw-ivan")
    check_dialog(uac, uas, near_caller=upstream.port, near_callee=cluster.port, kamailio=upstream)


def test_a_call_out_through_the_outbound_kamailio_to_the_carrier(carrier, tmp_path):
    cluster, _, outbound, carrier_uas = carrier
    uac, uas = run_call(tmp_path, uac_remote=f"127.0.0.1:{cluster.port}", callee="bob", domain="carrier.test",
                        caller="pbx", caller_domain="pbx.test", uas_port=carrier_uas,
                        nearest=outbound.address, cluster=cluster)
    (invite, _) = find(uas, "received", "INVITE")
    assert invite[0].startswith("INVITE sip:bob@carrier.test "), "the Request-URI stays the foreign target"
    check_dialog(uac, uas, near_caller=cluster.port, near_callee=outbound.port, kamailio=outbound)
