"""RFC 4475 and RFC 5118 torture messages: verdicts from the manifests, and
the specific points each RFC section makes about its message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cluster.sip import (
    AbsoluteURI, ParseError, Request, Response, SipURI, extract_call_id, parse_message,
    parse_uri, reject_malformed,
)

CORPUS = Path(__file__).resolve().parent.parent / "conformance"


def _entries():
    for folder in ("rfc4475", "rfc5118"):
        manifest = json.loads((CORPUS / folder / "manifest.json").read_text())
        for entry in manifest["messages"]:
            if entry["valid"] is not None:
                yield pytest.param(folder, entry, id=f"{folder}-{entry['name']}")


def _load(name: str, folder: str = "rfc4475") -> bytes:
    return (CORPUS / folder / f"{name}.dat").read_bytes()


def _msg(name: str, folder: str = "rfc4475"):
    return parse_message(_load(name, folder))


@pytest.mark.parametrize("folder,entry", list(_entries()))
def test_manifest_verdict(folder, entry):
    data = (CORPUS / folder / entry["file"]).read_bytes()
    if entry["valid"]:
        message = parse_message(data)
        # A message we accept must serialise back to exactly what we read
        # (trailing octets past Content-Length excluded, RFC 4475 dblreq).
        assert data.lstrip(b"\r\n").startswith(message.to_bytes())
        assert extract_call_id(data) == message.call_id.encode("utf-8", "surrogateescape")
    else:
        with pytest.raises(ParseError) as info:
            parse_message(data)
        assert info.value.reason
        assert 400 <= info.value.status <= 599


def test_manifest_counts_match_corpus():
    for folder, expected in (("rfc4475", 50), ("rfc5118", 12)):
        manifest = json.loads((CORPUS / folder / "manifest.json").read_text())
        assert manifest["count"] == expected == len(manifest["messages"])
        for entry in manifest["messages"]:
            assert (CORPUS / folder / entry["file"]).stat().st_size == entry["size"]


# --- RFC 4475 §3.1.1: valid messages ------------------------------------------


def test_wsinv_whitespace_and_folding():
    m = _msg("wsinv")
    assert isinstance(m, Request) and m.method == "INVITE"
    assert m.to.tag == "1918181833n"
    assert m.from_.tag == "98asjd8"
    assert m.from_.display_name == 'J Rosenberg \\"'
    assert m.max_forwards == 68
    assert (m.cseq.seq, m.cseq.method) == (9, "INVITE")
    assert [v.transport for v in m.vias] == ["UDP", "TCP", "UDP"]
    assert [v.branch for v in m.vias] == ["390skdjuw", "z9hG4bK9ikj8", "z9hG4bK30239"]
    assert m.vias[1].host == "spindle.example.com"
    assert m.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert m.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    assert m.get("subject") == ""
    contact = m.contacts[0]
    assert contact.display_name == 'Quoted string ""'
    assert contact.param("newparam") == "newvalue"
    assert contact.q == 0.33
    assert str(m.routes[0].uri) == "sip:services.example.com;lr;unknownwith=value;unknown-no-value"
    assert len(m.body) == 150


def test_intmeth_unknown_method_and_odd_values():
    m = _msg("intmeth")
    assert m.method == "!interesting-Method0123456789_*+`.%indeed'~"
    assert m.cseq.method == m.method
    assert m.to.display_name == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert m.vias[0].branch == "z9hG4bK-.!%66*_+`'~"
    assert m.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert m.from_.display_name == "token1~` token2'+_ token3*%!.-"
    assert m.from_.tag == "_token~1'+`*%!-."
    # UTF-8 in an extension header value is kept as text (BOM included).
    assert m.get("extensionHeader-!.%*+_`'~") == "\ufeff\u5927\u505c\u96fb"


def test_esc01_escaped_uris_are_equivalent():
    m = _msg("esc01")
    assert m.uri == parse_uri("sip:sips%3auser%40example.com@example.net")
    assert m.uri.user == "sips%3Auser%40example.com"
    assert m.to.uri == parse_uri("sip:user@example.com")
    assert m.from_.uri.user == "I%20have%20spaces"
    contact = m.contacts[0].uri
    assert contact == parse_uri("sip:caller@host5.example.net;lr;name=value%25%34%31")
    # No recursive unescaping: value%41 written as %25%34%31 is not "valueA".
    assert contact != parse_uri("sip:caller@host5.example.net;lr;name=valueA")


def test_escnull_two_distinct_contacts():
    m = _msg("escnull")
    a, b = (c.uri for c in m.contacts)
    assert a != b
    assert m.to.uri.user == "null-%00-null"


def test_esc02_percent_is_literal_in_method_and_header_names():
    m = _msg("esc02")
    assert m.method == "RE%47IST%45R"
    assert len(m.contacts) == 2
    assert m.get("C%6Fntact") == "<sip:alias2@host2.example.com>"
    assert m.to.display_name == "%Z%45"


def test_lwsdisp_display_name_without_space():
    assert _msg("lwsdisp").from_.display_name == "caller"


def test_longreq_many_and_long_values():
    m = _msg("longreq")
    assert len(m.vias) == 34
    assert m.to.display_name.startswith("I have a user name of extreme")
    assert len(m.call_id) > 100
    assert m.from_.tag.startswith("12982982982")


def test_dblreq_trailing_invite_ignored():
    data = _load("dblreq")
    m = parse_message(data)
    assert m.method == "REGISTER" and m.body == b""
    assert b"INVITE" not in m.to_bytes()


def test_semiuri_user_contains_semicolon():
    m = _msg("semiuri")
    assert m.uri.user == "user;par=u%40example.net"
    assert m.uri.host == "example.com"
    assert len(m.get_all("Accept")) == 6


def test_transports_listed():
    m = _msg("transports")
    assert [v.transport for v in m.vias] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]


def test_mpart01_binary_body_framed_by_content_length():
    m = _msg("mpart01")
    assert len(m.body) == 553 and b"\x00" in m.body


def test_unreason_and_noreason():
    m = _msg("unreason")
    assert isinstance(m, Response) and m.status == 200
    assert "простое" in m.reason
    n = _msg("noreason")
    assert n.status == 100 and n.reason == ""


# --- RFC 4475 §3.1.2 / §3.3: invalid messages ------------------------------------


def test_badvers_is_505():
    with pytest.raises(ParseError) as info:
        _msg("badvers")
    assert info.value.status == 505


def test_baddn_display_name_fault_alone():
    with pytest.raises(ParseError) as info:
        parse_message(_load("baddn") + b"\r\n")
    assert "display name" in info.value.reason


@pytest.mark.parametrize("name", ["badinv01", "clerr", "scalar02", "quotbal", "ltgtruri",
                                  "lwsruri", "lwsstart", "trws", "escruri", "baddate",
                                  "regbadct", "badaspec", "mismatch01", "insuf", "multi01"])
def test_malformed_requests_get_400_with_reason(name):
    data = _load(name)
    with pytest.raises(ParseError) as info:
        parse_message(data)
    assert info.value.status == 400
    answer = reject_malformed(data, info.value)
    assert answer is not None or name == "insuf"  # insuf lacks the fields to answer
    if answer is not None:
        # The answer copies the request's own (possibly broken) Via and To, so
        # read it back with the lenient tools only.
        assert answer.startswith(b"SIP/2.0 400 Bad Request\r\n")
        assert extract_call_id(answer) == extract_call_id(data)
        assert info.value.reason.split("'")[0].encode() in answer


@pytest.mark.parametrize("name", ["scalarlg", "bigcode"])
def test_malformed_responses_are_dropped(name):
    data = _load(name)
    with pytest.raises(ParseError) as info:
        parse_message(data)
    assert reject_malformed(data, info.value) is None


def test_badbranch_parses_but_is_not_rfc3261_branch():
    m = _msg("badbranch")
    assert m.via.branch == "z9hG4bK" and not m.via.rfc3261_branch


# --- RFC 4475 §3.4: valid messages that ask for a higher-layer error ------------


def test_unknown_schemes_parse_as_absolute_uris():
    assert isinstance(_msg("unkscm").uri, AbsoluteURI)
    assert _msg("novelsc").uri.scheme == "soap.beep"
    m = _msg("unksm2")
    assert isinstance(m.to.uri, AbsoluteURI) and m.to.uri.scheme == "isbn"


def test_bext01_option_tags():
    m = _msg("bext01")
    assert m.require == ["nothingSupportsThis", "nothingSupportsThisEither"]
    assert m.proxy_require == ["noProxiesSupportThis", "norDoAnyProxiesSupportThis"]


def test_invut_and_sdp01_content_types():
    assert _msg("invut").content_type == "application/unknownformat"
    assert "application/sdp" not in _msg("sdp01").get("Accept")


def test_regaut01_unknown_auth_scheme():
    auth = _msg("regaut01").authorizations[0]
    assert auth.scheme == "NoOneKnowsThisScheme" and not auth.is_digest


def test_bcast_second_via():
    assert _msg("bcast").vias[1].host == "255.255.255.255"


def test_zeromf_max_forwards_zero():
    assert _msg("zeromf").max_forwards == 0


def test_cparam_contact_vs_uri_parameters():
    c1 = _msg("cparam01").contacts[0]
    assert c1.param("unknownparam") == "" and not c1.uri.has_param("unknownparam")
    c2 = _msg("cparam02").contacts[0]
    assert c2.uri.has_param("unknownparam") and c2.param("unknownparam") is None


def test_regescrt_keeps_escaped_route_in_contact():
    c = _msg("regescrt").contacts[0]
    assert c.uri.headers == (("Route", "%3Csip:sip.example.com%3E"),)
    assert "?Route=%3Csip:sip.example.com%3E" in str(c.uri)


def test_inv2543_rfc2543_request():
    m = _msg("inv2543")
    assert m.via.branch is None and m.from_.tag is None
    assert m.max_forwards is None and m.content_length is None
    assert len(m.body) == 105


# --- RFC 5118 --------------------------------------------------------------------


def test_rfc5118_ipv6_references():
    good = _msg("ipv6-good", "rfc5118")
    assert good.uri.host == "[2001:db8::10]"
    amb = _msg("port-ambiguous", "rfc5118")
    assert amb.uri.host == "[2001:db8::10:5070]" and amb.uri.port is None
    unamb = _msg("port-unambiguous", "rfc5118")
    assert unamb.uri.host == "[2001:db8::10]" and unamb.uri.port == 5070
    with_delim = _msg("via-received-param-with-delim", "rfc5118")
    assert with_delim.via.received == "[2001:db8::9:255]"
    no_delim = _msg("via-received-param-no-delim", "rfc5118")
    assert no_delim.via.received == "2001:db8::9:255"
    three = _msg("ipv6-bug-abnf-3-colons", "rfc5118")
    assert three.uri.host == "[2001:db8:::192.0.2.1]"
    mixed = _msg("mult-ip-in-header", "rfc5118")
    hosts = [v.host for v in mixed.vias]
    assert any(h.startswith("[") for h in hosts) and any(not h.startswith("[") for h in hosts)
    mapped = _msg("ipv4-mapped-ipv6", "rfc5118")
    assert isinstance(mapped.contacts[0].uri, SipURI)
