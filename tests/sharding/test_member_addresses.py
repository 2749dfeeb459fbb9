"""An edge's advertised address per SIP transport in its membership record,
and how a worker's services answer from it."""

from __future__ import annotations

import json

import pytest

from cluster.sharding.membership import BadMemberRecord, Member
from nodes.worker.services import Services

SIP = (("UDP", "192.0.2.1:5060"), ("WSS", "192.0.2.1:8443"))


def test_the_addresses_survive_the_record():
    member = Member(id="edge-1", role="edge", link="tcp://127.0.0.1:7000", sip=SIP)
    back = Member.from_kv("/sipcluster/members/edge/edge-1", member.to_value())
    assert back.sip == SIP
    plain = Member(id="edge-2", role="edge", link="tcp://127.0.0.1:7001")
    assert Member.from_kv("/sipcluster/members/edge/edge-2", plain.to_value()).sip == ()


@pytest.mark.parametrize("value", ['"UDP"', '{"UDP": 5060}', '[["UDP", "x"]]'])
def test_a_malformed_address_map_is_refused(value):
    raw = json.dumps({"id": "edge-1", "role": "edge", "link": "tcp://127.0.0.1:7000",
                      "sip": json.loads(value)}).encode()
    with pytest.raises(BadMemberRecord):
        Member.from_kv("/sipcluster/members/edge/edge-1", raw)


def test_services_name_the_address_of_the_transport_a_request_leaves_over():
    services = Services(domains=["example.com"], trusted=[], nonce_secret=b"k" * 32, nonce_ttl=300,
                        locations=None, users=None)
    services.learn_edges({"edge-1": dict(SIP), "edge-2": {"TLS": "192.0.2.2:5061"}})
    assert services.advertised("edge-1", "WSS") == "192.0.2.1:8443"
    assert services.advertised("edge-1", "TLS") == "192.0.2.2:5061", "another edge has it"
    assert services.advertised(None, "UDP") == "192.0.2.1:5060"
    assert services.advertised("edge-1", "TCP") is None
    assert ("192.0.2.1", 8443) in services.local.addresses, "every edge address is us"


def test_set_probes_leave_through_a_linked_edge_by_its_udp_address():
    from nodes.worker.dispatch import probe_via
    tls_only = Member(id="edge-0", role="edge", link="tcp://127.0.0.1:6999", sip=(("TLS", "192.0.2.9:5061"),))
    unlinked = Member(id="edge-9", role="edge", link="tcp://127.0.0.1:7009", sip=SIP)
    member = Member(id="edge-1", role="edge", link="tcp://127.0.0.1:7000", sip=SIP)
    assert member.sip_address("udp") == "192.0.2.1:5060" and member.sip_address("TCP") == ""
    assert probe_via([tls_only, unlinked, member], {"edge-0", "edge-1"}) == ("edge-1", "192.0.2.1:5060")
    assert probe_via([tls_only, unlinked], {"edge-0"}) is None
