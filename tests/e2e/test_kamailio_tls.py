"""Kamailio as a carrier interconnect over TLS, both ways (issue 20 part 5).

Debian's Kamailio with its TLS module runs with a configuration this test
writes (loopback ports, its own runtime directory, ``-DD -E``) and a
certificate from the test CA. Carrier to cluster: a UDP phone on the
carrier side calls a user registered with the cluster; Kamailio relays the
INVITE to the cluster's TLS port, and the dialog (200, ACK, BYE) goes
through it. Cluster to carrier: a trusted caller calls a number behind the
carrier; the cluster's edge opens TLS to Kamailio, checking its certificate
against the test CA (edge.tls_ca), and Kamailio hands the call to the
carrier's phone over UDP.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from cluster.sip import make_response
from tests.e2e.harness import Registrant, SipAgent, bound, free_port_pair, wait_for
from tests.e2e.kamailio import KamailioProcess
from tests.e2e.secure import edge_stats, start_secure
from tests.support.pki import make_pki

pytestmark = pytest.mark.e2e

SCRIPT = """#!KAMAILIO
debug=2
log_stderror=yes
children=1
tcp_children=1
enable_tls=yes
auto_aliases=no
dns=no
rev_dns=no
listen=udp:127.0.0.1:{udp_port}
listen=tls:127.0.0.1:{tls_port}
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "siputils.so"
loadmodule "textops.so"
loadmodule "tls.so"
modparam("tls", "config", "{tls_config}")

request_route {{
    if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
    if (has_totag()) {{
        if (loose_route()) {{ t_relay(); exit; }}
        if (is_method("ACK")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
        sl_send_reply("404", "Not Here"); exit;
    }}
    if (is_method("CANCEL")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
    record_route();
    if ($rd == "localhost") {{
        # The carrier's phones call the cluster's users: over TLS.
        $du = "sip:127.0.0.1:{cluster_tls};transport=tls";
    }} else {{
        # Calls from the cluster go to the carrier's phone.
        $du = "sip:127.0.0.1:{phone_port}";
    }}
    t_relay();
}}
"""

TLS_CONFIG = """[server:default]
method = TLSv1.2+
verify_certificate = no
require_certificate = no
certificate = {cert}
private_key = {key}
ca_list = {ca}

[client:default]
method = TLSv1.2+
verify_certificate = yes
require_certificate = yes
ca_list = {ca}
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def cluster(etcd_server, tmp_path_factory, pki):
    up = start_secure(etcd_server.endpoint, tmp_path_factory.mktemp("kamailio-cluster"), pki,
                      env={"SIPCLUSTER_EDGE_TLS_CA": str(pki.ca)})
    yield up
    up.stop()


class Carrier:
    """Kamailio with its TLS module: UDP towards the carrier's phone, TLS
    towards the cluster (tests/e2e/kamailio.py starts it)."""

    def __init__(self, directory: Path, pki, cluster_tls: int, phone_port: int) -> None:
        self.udp_port, self.tls_port = free_port_pair(), free_port_pair()
        cert, key = pki.server("kamailio", "carrier.example")
        tls_config = directory / "tls.cfg"
        tls_config.write_text(TLS_CONFIG.format(cert=cert, key=key, ca=pki.ca))
        self.kamailio = KamailioProcess(directory, SCRIPT.format(
            udp_port=self.udp_port, tls_port=self.tls_port, tls_config=tls_config,
            cluster_tls=cluster_tls, phone_port=phone_port))
        self.kamailio.start(lambda: bound(self.tls_port, "tcp"), "kamailio listening on TLS")

    def stop(self) -> None:
        self.kamailio.stop()


@pytest.fixture(scope="module")
def carrier(tmp_path_factory, pki, cluster):
    phone = SipAgent()
    kamailio = Carrier(tmp_path_factory.mktemp("kamailio"), pki, cluster.tls_port, phone.port)
    kamailio.phone = phone
    yield kamailio
    kamailio.stop()
    phone.close()


def dialog(caller: SipAgent, port: int, callee: SipAgent, invite, *, timeout: float = 30.0):
    """INVITE ``invite`` to ``port``; ``callee`` answers 200; ACK and BYE
    follow the route set. Returns the INVITE as the callee saw it."""
    call_id = invite.call_id

    def reached():
        caller.send(invite, port)
        got, source = callee.receive(lambda m: getattr(m, "method", None) == "INVITE" and m.call_id == call_id,
                                     timeout=3)
        return (got, source) if got is not None else None
    incoming, source = wait_for(reached, timeout=60, what="the INVITE through the carrier")
    routes = incoming.get_all("record-route")
    callee.answer(incoming, 200, source, to_tag="answered",
                  headers=[("Contact", callee.contact), *[("Record-Route", r) for r in routes]])
    final, _ = caller.receive(lambda m: getattr(m, "status", 0) == 200 and m.call_id == call_id, timeout)
    assert final is not None, "no 200 back through the carrier"
    route_set = [("Route", r) for r in reversed(final.get_all("record-route"))]
    remote = str(final.contacts[0].uri)
    for method in ("ACK", "BYE"):
        request = caller.request(method, remote, call_id=call_id, cseq=1 if method == "ACK" else 2,
                                 from_=str(invite.from_.uri), to=final.get("to"),
                                 headers=route_set)
        caller.send(request, port)
        got, source = callee.receive(lambda m, method=method: getattr(m, "method", None) == method
                                     and m.call_id == call_id, timeout)
        assert got is not None, f"the {method} did not reach the callee"
        if method == "BYE":
            callee.send(make_response(got, 200).to_bytes(), source[1], source[0])
            done, _ = caller.receive(lambda m: getattr(m, "status", 0) == 200 and m.cseq.method == "BYE"
                                     and m.call_id == call_id, timeout)
            assert done is not None
    return incoming


def test_a_carrier_calls_a_cluster_user_over_tls(cluster, carrier):
    user, password = f"kam-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    cluster.user("add", f"{user}@localhost", password=password)
    registrant = Registrant(cluster.port, user, password)
    try:
        assert registrant.register([f"<{registrant.agent.contact}>"], expires=600).status == 200
        with SipAgent() as phone:
            invite = phone.request("INVITE", f"sip:{user}@localhost", call_id=f"kam-in-{uuid.uuid4().hex}",
                                   cseq=1, from_="sip:+15551230000@carrier.example",
                                   to=f"sip:{user}@localhost", headers=[("Contact", phone.contact)])
            incoming = dialog(phone, carrier.udp_port, registrant.agent, invite)
        vias = [v.transport for v in incoming.vias]
        assert vias[:2] == ["UDP", "TLS"], f"the cluster received it over TLS from Kamailio: {vias}"
    finally:
        registrant.close()
    assert edge_stats(cluster).get("sent_tls", 0) >= 3


def test_the_cluster_calls_the_carrier_over_tls(cluster, carrier):
    target = f"sip:+15559870000@127.0.0.1:{carrier.tls_port};transport=tls"
    with SipAgent() as caller:
        invite = caller.request("INVITE", target, call_id=f"kam-out-{uuid.uuid4().hex}", cseq=1,
                                from_="sip:pbx@localhost", to=target, headers=[("Contact", caller.contact)])
        incoming = dialog(caller, cluster.port, carrier.phone, invite)
    vias = [v.transport for v in incoming.vias]
    assert vias[:2] == ["UDP", "TLS"], f"Kamailio received it over TLS from the cluster: {vias}"

