"""RFC 3261 §10.3 processing, one rule per test (sans-IO: no store, no clock)."""

from __future__ import annotations

import pytest

from cluster.sip import Request
from cluster.registrar import (
    REPLIES, Binding, Outcome, RegistrarPolicy, Source, binding_id, failure, process_register,
)
from cluster.sip.uri import parse_uri

from .samples import register_request, rfc4475

NOW = 1_000_000.0
AOR = "sip:alice@example.com"
POLICY = RegistrarPolicy(min_expires=60, max_expires=7200, default_expires=3600)


def stored(contact: str, *, call_id: str = "reg-1@10.0.0.1", cseq: int = 1, expires_at: float = NOW + 600,
           instance: str | None = None, reg_id: int | None = None, q: float | None = None) -> Binding:
    return Binding(aor=AOR, contact=contact, expires_at=expires_at, call_id=call_id, cseq=cseq, q=q,
                   instance=instance, reg_id=reg_id, registered_at=NOW - 10)


def run(request: Request, current=(), **kw):
    return process_register(request, now=NOW, current=list(current), policy=POLICY, **kw)


def contacts(result) -> list[str]:
    return [v for n, v in result.headers if n == "Contact"]


def test_new_binding_gets_default_expires_and_is_put():
    result = run(register_request(["<sip:alice@10.0.0.1:5060>"]))
    assert (result.status, result.reason, result.outcome) == (200, "OK", Outcome.OK)
    assert contacts(result) == ["<sip:alice@10.0.0.1:5060>;expires=3600"]
    [put] = result.puts
    assert (put.aor, put.contact, put.expires_at, put.call_id, put.cseq) == (
        AOR, "sip:alice@10.0.0.1:5060", NOW + 3600, "reg-1@10.0.0.1", 1)
    assert result.deletes == ()


def test_contact_expires_param_beats_header_and_header_beats_default():
    request = register_request(["<sip:a@10.0.0.1>;expires=300", "<sip:b@10.0.0.2>"], expires=1200)
    result = run(request)
    assert result.status == 200
    assert contacts(result) == ["<sip:a@10.0.0.1>;expires=300", "<sip:b@10.0.0.2>;expires=1200"]
    assert sorted(b.expires_at - NOW for b in result.puts) == [300, 1200]


def test_expires_zero_removes_that_binding_only():
    keep, drop = stored("sip:a@10.0.0.1", call_id="other"), stored("sip:b@10.0.0.2", call_id="other")
    result = run(register_request(["<sip:b@10.0.0.2>;expires=0"]), [keep, drop])
    assert result.status == 200
    assert result.deletes == (drop.binding_id,)
    assert result.puts == ()
    assert contacts(result) == ["<sip:a@10.0.0.1>;expires=600"]


def test_expires_zero_for_unknown_contact_writes_nothing():
    result = run(register_request(["<sip:nobody@10.0.0.9>"], expires=0))
    assert (result.status, result.puts, result.deletes, contacts(result)) == (200, (), (), [])


def test_interval_too_brief_is_423_with_min_expires_and_writes_nothing():
    old = stored("sip:a@10.0.0.1", call_id="other")
    request = register_request(["<sip:b@10.0.0.2>;expires=3600", "<sip:a@10.0.0.1>;expires=30"])
    result = run(request, [old])
    assert (result.status, result.reason, result.outcome) == (423, "Interval Too Brief",
                                                              Outcome.INTERVAL_TOO_BRIEF)
    assert ("Min-Expires", "60") in result.headers
    assert not result.has_writes and contacts(result) == []


def test_interval_above_max_is_shortened():
    result = run(register_request(["<sip:a@10.0.0.1>"], expires=86400))
    assert result.status == 200
    assert contacts(result) == ["<sip:a@10.0.0.1>;expires=7200"]
    assert result.puts[0].expires_at == NOW + 7200


def test_star_with_expires_zero_removes_every_binding():
    current = [stored("sip:a@10.0.0.1", call_id="x"), stored("sip:b@10.0.0.2", call_id="y")]
    result = run(register_request(["*"], expires=0, call_id="z", cseq=1), current)
    assert result.status == 200
    assert sorted(result.deletes) == sorted(b.binding_id for b in current)
    assert result.puts == () and contacts(result) == []


@pytest.mark.parametrize("expires", [None, 3600])
def test_star_without_expires_zero_is_400(expires):
    current = [stored("sip:a@10.0.0.1")]
    result = run(register_request(["*"], expires=expires, call_id="z"), current)
    assert (result.status, result.outcome) == (400, Outcome.BAD_WILDCARD)
    assert not result.has_writes


def test_star_with_another_contact_is_400():
    request = Request("REGISTER", "sip:example.com", [
        ("Via", "SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1"), ("From", "<sip:alice@example.com>;tag=1"),
        ("To", "<sip:alice@example.com>"), ("Call-ID", "c"), ("CSeq", "1 REGISTER"),
        ("Contact", "*"), ("Contact", "<sip:a@10.0.0.1>"), ("Expires", "0"),
    ])
    result = run(request, [stored("sip:a@10.0.0.1")])
    assert result.status == 400 and not result.has_writes


def test_star_obeys_call_id_cseq_ordering():
    current = [stored("sip:a@10.0.0.1", call_id="same", cseq=7), stored("sip:b@10.0.0.2", call_id="x")]
    stale = run(register_request(["*"], expires=0, call_id="same", cseq=7), current)
    assert (stale.status, stale.outcome, stale.has_writes) == (500, Outcome.OUT_OF_ORDER, False)
    fresh = run(register_request(["*"], expires=0, call_id="same", cseq=8), current)
    assert fresh.status == 200 and len(fresh.deletes) == 2


@pytest.mark.parametrize("cseq", [4, 5])
def test_same_call_id_with_cseq_not_higher_is_500(cseq):
    old = stored("sip:a@10.0.0.1", call_id="same", cseq=5)
    result = run(register_request(["<sip:a@10.0.0.1>"], call_id="same", cseq=cseq), [old])
    assert (result.status, result.reason, result.outcome) == (500, "Server Internal Error",
                                                              Outcome.OUT_OF_ORDER)
    assert not result.has_writes


def test_cseq_rule_applies_per_binding():
    # A higher CSeq on another binding of the same Call-ID does not block a
    # contact that has no stored binding.
    other = stored("sip:b@10.0.0.2", call_id="same", cseq=9)
    result = run(register_request(["<sip:a@10.0.0.1>"], call_id="same", cseq=3), [other])
    assert result.status == 200 and len(result.puts) == 1


def test_same_call_id_higher_cseq_refreshes():
    old = stored("sip:a@10.0.0.1", call_id="same", cseq=5, expires_at=NOW + 20)
    result = run(register_request(["<sip:a@10.0.0.1>"], call_id="same", cseq=6, expires=900), [old])
    assert result.status == 200
    assert [b.binding_id for b in result.puts] == [old.binding_id]
    assert contacts(result) == ["<sip:a@10.0.0.1>;expires=900"]


def test_different_call_id_replaces_even_with_lower_cseq():
    old = stored("sip:a@10.0.0.1", call_id="before-reboot", cseq=900)
    result = run(register_request(["<sip:a@10.0.0.1>"], call_id="after-reboot", cseq=1), [old])
    assert result.status == 200
    [put] = result.puts
    assert (put.binding_id, put.call_id, put.cseq) == (old.binding_id, "after-reboot", 1)
    assert len(contacts(result)) == 1


def test_uri_equal_under_19_1_4_is_the_same_binding():
    old = stored("sip:alice@HOST.example.com:5060", call_id="x")
    result = run(register_request(["<sip:alice@host.example.com:5060>"], call_id="y"), [old])
    assert [b.binding_id for b in result.puts] == [old.binding_id]
    assert len(result.bindings) == 1


def test_instance_and_reg_id_replace_flow_even_when_contact_changes():
    instance = "urn:uuid:00000000-0000-1000-8000-000A95A0E128"
    old = stored("sip:alice@192.0.2.1:5060;transport=tcp", call_id="x", instance=instance, reg_id=1)
    other_flow = stored("sip:alice@192.0.2.1:5060;transport=tcp", call_id="x", instance=instance,
                        reg_id=2)
    request = register_request(
        [f'<sip:alice@198.51.100.7:40000;transport=tcp;ob>;+sip.instance="<{instance}>";reg-id=1'],
        call_id="y", headers=(("Supported", "outbound, path"),))
    result = run(request, [old, other_flow])
    assert result.status == 200
    [put] = result.puts
    assert (put.binding_id, put.contact, put.instance, put.reg_id) == (
        old.binding_id, "sip:alice@198.51.100.7:40000;transport=tcp;ob", instance, 1)
    assert result.deletes == ()
    assert sorted(contacts(result)) == sorted([
        f'<sip:alice@192.0.2.1:5060;transport=tcp>;expires=600;+sip.instance="<{instance}>";reg-id=2',
        f'<sip:alice@198.51.100.7:40000;transport=tcp;ob>;expires=3600;+sip.instance="<{instance}>";reg-id=1',
    ])
    assert ("Require", "outbound") in result.headers


def test_instance_without_reg_id_replaces_same_instance():
    instance = "urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6"
    old = stored("sip:alice@192.0.2.1", call_id="x", instance=instance)
    request = register_request([f'<sip:alice@192.0.2.99>;+sip.instance="<{instance}>"'], call_id="y")
    result = run(request, [old])
    assert [b.binding_id for b in result.puts] == [old.binding_id]
    assert contacts(result) == [f'<sip:alice@192.0.2.99>;expires=3600;+sip.instance="<{instance}>"']
    assert ("Require", "outbound") not in result.headers


def test_q_values_are_kept():
    result = run(register_request(["<sip:a@10.0.0.1>;q=0.7", "<sip:b@10.0.0.2>;q=1.0"]))
    assert sorted(b.q for b in result.puts) == [0.7, 1.0]
    assert contacts(result) == ["<sip:a@10.0.0.1>;expires=3600;q=0.7", "<sip:b@10.0.0.2>;expires=3600;q=1"]


def test_path_source_edge_conn_and_user_agent_are_stored():
    request = register_request(
        ["<sip:alice@10.0.0.1:5060;transport=tcp>"],
        headers=(("Path", "<sip:edge1.example.net;lr>"), ("Path", "<sip:p2.example.net;lr;ob>"),
                 ("Supported", "path"), ("User-Agent", "softphone/1.0")))
    source = Source("TCP", "203.0.113.5", 61000)
    result = run(request, source=source, edge="edge-1", conn=42)
    [put] = result.puts
    assert put.path == ("<sip:edge1.example.net;lr>", "<sip:p2.example.net;lr;ob>")
    assert (put.source, put.edge, put.conn, put.user_agent, put.registered_at) == (
        source, "edge-1", 42, "softphone/1.0", NOW)
    # RFC 3327 §5.3: the Path goes back to a UA that supports it.
    assert [v for n, v in result.headers if n == "Path"] == list(put.path)


def test_no_contact_is_a_query_listing_remaining_seconds():
    current = [stored("sip:a@10.0.0.1", expires_at=NOW + 500.4), stored("sip:b@10.0.0.2", q=0.5)]
    result = run(register_request([]), current)
    assert (result.status, result.has_writes) == (200, False)
    assert contacts(result) == ["<sip:a@10.0.0.1>;expires=500", "<sip:b@10.0.0.2>;expires=600;q=0.5"]


def test_expired_bindings_do_not_exist():
    dead = stored("sip:a@10.0.0.1", call_id="same", cseq=50, expires_at=NOW - 1)
    result = run(register_request(["<sip:a@10.0.0.1>"], call_id="same", cseq=2), [dead])
    assert result.status == 200  # no stale-CSeq 500 from a binding that expired
    assert contacts(result) == ["<sip:a@10.0.0.1>;expires=3600"]
    assert run(register_request([]), [dead]).headers == ()


def test_non_sip_to_is_400_rfc4475_unksm2():
    result = run(rfc4475("unksm2"))
    assert (result.status, result.outcome) == (400, Outcome.NOT_SIP_AOR)
    assert not result.has_writes


def test_malformed_expires_is_400():
    result = run(register_request(["<sip:a@10.0.0.1>"], expires="soon"))
    assert (result.status, result.outcome) == (400, Outcome.MALFORMED)
    assert any(n == "Warning" and "Expires" in v for n, v in result.headers)


@pytest.mark.parametrize("name, contact", [
    # cparam01: ';unknownparam' outside <> is a contact-param, not a URI param.
    ("cparam01", "sip:+19725552222@gw1.example.net"),
    # cparam02: inside <> it is a URI parameter and stays.
    ("cparam02", "sip:+19725552222@gw1.example.net;unknownparam"),
    # regescrt: the escaped Route header stays in the URI.
    ("regescrt", "sip:user@example.com?Route=%3Csip:sip.example.com%3E"),
])
def test_rfc4475_registers(name, contact):
    result = run(rfc4475(name))
    assert result.status == 200
    [put] = result.puts
    assert put.contact == contact
    assert contacts(result) == [f"<{contact}>;expires=3600"]
    assert parse_uri(put.contact) == parse_uri(contact)


def test_date_header_on_request():
    policy = RegistrarPolicy(date_header=True)
    result = process_register(register_request(["<sip:a@10.0.0.1>"]), now=0.0, current=[], policy=policy)
    assert ("Date", "Thu, 01 Jan 1970 00:00:00 GMT") in result.headers


def test_reply_table_covers_every_outcome():
    assert set(REPLIES) == set(Outcome)
    conflict = failure(Outcome.CONFLICT, "busy")
    assert (conflict.status, conflict.headers[0]) == (500, ("Retry-After", "5"))
    unavailable = failure(Outcome.STORE_UNAVAILABLE)
    assert (unavailable.status, unavailable.headers) == (503, (("Retry-After", "5"),))


def test_response_carries_status_and_contacts():
    request = register_request(["<sip:a@10.0.0.1>"])
    response = run(request).response(request)
    assert (response.status, response.reason) == (200, "OK")
    assert response.get_all("contact") == ["<sip:a@10.0.0.1>;expires=3600"]
    assert response.to.tag is not None and response.call_id == request.call_id


def test_binding_id_is_stable():
    uri = parse_uri("sip:a@10.0.0.1")
    assert binding_id(AOR, uri, None, None) == binding_id(AOR, parse_uri("sip:a@10.0.0.1"), None, None)
    assert binding_id(AOR, uri, None, None) != binding_id("sip:bob@example.com", uri, None, None)
    assert binding_id(AOR, uri, "urn:x", 1) == binding_id(AOR, parse_uri("sip:z@10.9.9.9"), "urn:x", 1)
    assert binding_id(AOR, uri, "urn:x", 1) != binding_id(AOR, uri, "urn:x", 2)
