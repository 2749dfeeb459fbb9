"""The message model: header list, typed accessors, serialisation."""

from __future__ import annotations

import pytest

from cluster.sip import (
    ParseError, Request, Response, Via, make_response, parse_message, parse_uri,
)
from tests.sip.samples import INVITE, OPTIONS, RESPONSE, SDP


def test_typed_accessors_of_a_typical_invite():
    m = parse_message(INVITE)
    assert m.method == "INVITE" and str(m.uri) == "sip:bob@biloxi.example.com"
    assert m.call_id == "a84b4c76e66710@pc33.atlanta.example.com"
    assert (m.cseq.seq, m.cseq.method) == (314159, "INVITE")
    assert m.via.branch == "z9hG4bK776asdhds" and m.via.has_rport and m.via.rport is None
    assert m.via.sent_by == "pc33.atlanta.example.com:5060" and m.via.port == 5060
    assert m.vias[1].received == "192.0.2.40"
    assert m.from_.display_name == "Alice" and m.from_.tag == "1928301774"
    assert m.to.display_name == "Bob" and m.to.tag is None
    assert m.max_forwards == 70
    assert m.allow == ["INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "UPDATE"]
    assert m.supported == ["replaces", "timer"]
    assert m.user_agent == "sipcluster-bench/1.0"
    assert m.content_type == "application/sdp" and m.body == SDP
    assert m.contacts[0].uri.transport == "udp"


def test_unmodified_message_serialises_byte_for_byte():
    for data in (INVITE, OPTIONS, RESPONSE):
        m = parse_message(data)
        assert m.to_bytes() == data


def test_modified_message_keeps_untouched_fields_and_recomputes_length():
    m = parse_message(INVITE)
    m.push_via("SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKproxy1")
    m.set("Max-Forwards", m.max_forwards - 1)
    m.add("Record-Route", "<sip:127.0.0.1;lr>", first=True)
    m.set_body(b"v=0\r\n")
    out = m.to_bytes()
    again = parse_message(out)
    assert [v.branch for v in again.vias] == ["z9hG4bKproxy1", "z9hG4bK776asdhds", "z9hG4bKnashds8"]
    assert again.max_forwards == 69
    assert again.content_length == 5 and again.body == b"v=0\r\n"
    # Untouched fields keep their exact received spelling.
    assert b'From: "Alice" <sip:alice@atlanta.example.com>;tag=1928301774\r\n' in out
    assert b"Max-Forwards: 69\r\n" in out and b"Content-Length: 5\r\n" in out


def test_pop_via_splits_a_combined_field():
    data = OPTIONS.replace(
        b"Via: SIP/2.0/TCP pc33.atlanta.example.com;branch=z9hG4bKhjhs8ass877\r\n",
        b"Via: SIP/2.0/UDP a.example.com;branch=z9hG4bK1, SIP/2.0/UDP b.example.com;branch=z9hG4bK2\r\n",
    )
    m = parse_message(data)
    assert len(m.vias) == 2
    top = m.pop_via()
    assert top.host == "a.example.com"
    assert [v.host for v in m.vias] == ["b.example.com"]
    assert parse_message(m.to_bytes()).via.branch == "z9hG4bK2"


def test_header_names_case_insensitive_and_compact():
    data = OPTIONS.replace(b"Call-ID:", b"i:").replace(b"To:", b"t  :")
    m = parse_message(data)
    assert m.get("call-id") == m.get("I") == "a84b4c76e66710"
    assert m.to.uri == parse_uri("sip:carol@chicago.example.com")
    assert m.has("CALL-ID") and not m.has("Route")


def test_duplicate_and_unknown_headers_are_kept_in_order():
    data = OPTIONS.replace(b"Accept: application/sdp\r\n",
                           b"X-A: 1\r\nRoute: <sip:p1.example.com;lr>\r\nX-A: 2\r\n"
                           b"Route: <sip:p2.example.com;lr>, <sip:p3.example.com;lr>\r\n")
    m = parse_message(data)
    assert m.get_all("x-a") == ["1", "2"]
    assert [r.uri.host for r in m.routes] == ["p1.example.com", "p2.example.com", "p3.example.com"]
    m.remove("x-a")
    assert m.get_all("X-A") == [] and b"X-A" not in m.to_bytes()


def test_list_split_respects_quotes_and_brackets():
    data = OPTIONS.replace(
        b"Accept: application/sdp\r\n",
        b'Contact: "Doe, John" <sip:j@a.example.com;x=1>, <sip:k,x@b.example.com>;q=0.5\r\n',
    )
    m = parse_message(data.replace(b"OPTIONS", b"REGISTER"))
    assert [c.display_name for c in m.contacts] == ["Doe, John", None]
    assert m.contacts[1].q == 0.5


def test_contact_star():
    data = OPTIONS.replace(b"Accept: application/sdp\r\n", b"Contact: *\r\nExpires: 0\r\n")
    m = parse_message(data.replace(b"OPTIONS", b"REGISTER"))
    assert m.contact_star and m.contacts == [] and m.expires == 0


def test_contact_outbound_parameters():
    data = OPTIONS.replace(
        b"Accept: application/sdp\r\n",
        b'Contact: <sip:a@192.0.2.1;ob>;+sip.instance="<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>";reg-id=1;expires=600\r\n',
    )
    c = parse_message(data.replace(b"OPTIONS", b"REGISTER")).contacts[0]
    assert c.instance == "urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF"
    assert c.reg_id == 1 and c.expires == 600


def test_digest_authorization_fields():
    data = OPTIONS.replace(
        b"Accept: application/sdp\r\n",
        b'Authorization: Digest username="alice", realm="atlanta.example.com",\r\n'
        b' nonce="84a4cc6f3082121f32b42a2187831a9e", uri="sip:carol@chicago.example.com",\r\n'
        b' response="7587245234b3434cc3412213e5f113a5", algorithm=SHA-256, qop=auth,\r\n'
        b' nc=00000001, cnonce="0a4f113b"\r\n',
    )
    auth = parse_message(data).authorizations[0]
    assert auth.is_digest
    assert auth.get("username") == "alice" and auth.get("algorithm") == "SHA-256"
    assert auth.get("nc") == "00000001" and auth.get("qop") == "auth"
    assert auth.get("uri") == "sip:carol@chicago.example.com"


def test_retry_after_and_expires():
    data = RESPONSE.replace(b"SIP/2.0 180 Ringing", b"SIP/2.0 503 Service Unavailable").replace(
        b"Content-Length: 0\r\n", b"Retry-After: 18000 (in a meeting);duration=3600\r\nContent-Length: 0\r\n")
    m = parse_message(data)
    assert m.retry_after.seconds == 18000 and m.retry_after.duration == 3600
    assert m.retry_after.comment == "(in a meeting)"


def test_build_request_from_scratch():
    req = Request("OPTIONS", "sip:bob@example.com", [
        ("Via", "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKabc"),
        ("From", "<sip:alice@example.com>;tag=1"),
        ("To", "<sip:bob@example.com>"),
        ("Call-ID", "xyz"), ("CSeq", "1 OPTIONS"), ("Max-Forwards", "70"),
    ])
    data = req.to_bytes()
    assert data.startswith(b"OPTIONS sip:bob@example.com SIP/2.0\r\n")
    assert data.endswith(b"Content-Length: 0\r\n\r\n")
    again = parse_message(data)
    assert again.call_id == "xyz" and again.cseq.seq == 1


def test_make_response_follows_8_2_6():
    req = parse_message(INVITE)
    resp = make_response(req, 486)
    assert resp.status == 486 and resp.reason == "Busy Here"
    assert [v.branch for v in resp.vias] == [v.branch for v in req.vias]
    assert resp.call_id == req.call_id and resp.cseq == req.cseq
    assert resp.from_.tag == req.from_.tag
    tag = resp.to.tag
    assert tag
    # A retransmission of the request gets the same tag: stateless shards agree.
    assert make_response(parse_message(INVITE), 486).to.tag == tag
    trying = make_response(req, 100)
    assert trying.to.tag is None
    parsed = parse_message(resp.to_bytes())
    assert isinstance(parsed, Response) and parsed.to.tag == tag


def test_via_value_object():
    v = Via("UDP", "192.0.2.1", 5060, (("branch", "z9hG4bKx"),))
    v2 = v.with_param("received", "198.51.100.1").with_param("rport", "5062")
    assert str(v2) == "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKx;received=198.51.100.1;rport=5062"
    assert v2.rport == 5062 and v2.rfc3261_branch and not v2.reliable


@pytest.mark.parametrize("data,status", [
    (b"", 400),
    (b"garbage\r\n\r\n", 400),
    (b"INVITE sip:a@b SIP/3.0\r\n\r\n", 505),
    (OPTIONS.replace(b"CSeq: 63104 OPTIONS", b"CSeq: x OPTIONS"), 400),
    (OPTIONS.replace(b"Max-Forwards: 70", b"Max-Forwards: seventy"), 400),
    (OPTIONS.replace(b"Via: SIP/2.0/TCP pc33.atlanta.example.com;branch=z9hG4bKhjhs8ass877\r\n", b""), 400),
    (OPTIONS.replace(b"Content-Length: 0", b"Content-Length: 10"), 400),
    (OPTIONS.replace(b"To: <sip:carol@chicago.example.com>", b"To: <sip:carol@chicago.example.com"), 400),
])
def test_parse_errors_carry_status(data, status):
    with pytest.raises(ParseError) as info:
        parse_message(data)
    assert info.value.status == status and info.value.reason


def test_stream_mode_requires_content_length():
    data = OPTIONS.replace(b"Content-Length: 0\r\n", b"")
    assert parse_message(data).body == b""
    with pytest.raises(ParseError):
        parse_message(data, datagram=False)


def test_set_top_via_adds_received_and_rport():
    m = parse_message(INVITE)
    top = m.via.with_param("received", "198.51.100.7").with_param("rport", "40123")
    m.set_top_via(top)
    again = parse_message(m.to_bytes())
    assert again.via.received == "198.51.100.7" and again.via.rport == 40123
    assert again.vias[1].branch == "z9hG4bKnashds8"
    assert make_response(again, 200).via.received == "198.51.100.7"
