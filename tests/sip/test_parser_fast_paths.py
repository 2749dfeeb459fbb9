"""The parser's hot paths agree with the general ones.

parse_message validates the mandatory fields itself and fills the accessor
cache; a message built field by field parses the same fields lazily through
the accessors. Frozen values on the hot path are built as writable drafts
and retyped; they must be indistinguishable from values built by __init__.
"""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster.sip import NameAddress, ParseError, Request, Response, SipURI, Via, parse_message
from cluster.sip.address import _NameAddressDraft, parse_name_addr
from cluster.sip.fields import CSeq, _CSeqDraft, parse_cseq
from cluster.sip.headers import _KEY_CACHE, header_key
from cluster.sip.message import Header
from cluster.sip.uri import _SipURIDraft, parse_uri
from cluster.sip.via import _ViaDraft, parse_via
from tests.sip.samples import INVITE, OPTIONS, RESPONSE

CORPUS = Path(__file__).resolve().parent.parent / "conformance"
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _accepted_corpus() -> list[bytes]:
    out = [INVITE, OPTIONS, RESPONSE]
    for path in sorted(CORPUS.glob("*/*.dat")):
        try:
            parse_message(path.read_bytes())
        except ParseError:
            continue
        out.append(path.read_bytes())
    return out


ACCEPTED = _accepted_corpus()
ACCESSORS = ("call_id", "cseq", "from_", "to", "via", "vias", "max_forwards",
             "content_length", "routes", "record_routes")


def _rebuilt(message):
    """The same fields, added one by one: every accessor takes the lazy path."""
    fields = [(h.name, h.value) for h in message.headers]
    if isinstance(message, Request):
        return Request(message.method, message.uri, fields, message.body)
    return Response(message.status, message.reason, fields, message.body)


def _read(message, name):
    try:
        return getattr(message, name)
    except ParseError as error:
        return ("ParseError", error.reason)


def _assert_agree(data: bytes) -> None:
    parsed = parse_message(data)
    rebuilt = _rebuilt(parsed)
    assert rebuilt._cache == {}
    for name in ACCESSORS:
        assert _read(parsed, name) == _read(rebuilt, name), name


def test_corpus_is_not_trivial():
    assert len(ACCEPTED) > 30


@pytest.mark.parametrize("data", ACCEPTED, ids=range(len(ACCEPTED)))
def test_parser_cache_agrees_with_lazy_accessors(data):
    _assert_agree(data)


@SETTINGS
@given(st.sampled_from([INVITE, OPTIONS, RESPONSE]), st.integers(0, 400),
       st.sampled_from([b" ", b"\t", b"\r\n ", b"\r\n\t", b"  ", b"\r\n  \t"]))
def test_whitespace_and_folding_keep_agreement(seed, pos, junk):
    # Whitespace dropped into a field, including a fold, either breaks the
    # message or leaves the parser and the lazy accessors agreeing.
    start = seed.find(b"\r\n") + 2
    pos = start + pos % (seed.find(b"\r\n\r\n") - start)
    data = seed[:pos] + junk + seed[pos:]
    try:
        parse_message(data)
    except ParseError:
        return
    _assert_agree(data)


def test_hand_built_header_fields_match_the_constructor():
    message = parse_message(INVITE)
    for h in message.headers:
        again = Header(h.key, h.name, h.value, h.raw)
        assert (h.key, h.name, h.value, h.raw) == (again.key, again.name, again.value, again.raw)
        assert type(h) is Header
    assert [h.raw for h in message.headers] == INVITE.split(b"\r\n\r\n")[0].decode().split("\r\n")[1:]


def test_folded_field_joins_with_one_space_and_keeps_raw_text():
    data = INVITE.replace(
        b"User-Agent: sipcluster-bench/1.0\r\n", b"User-Agent: sipcluster\r\n \t bench/1.0\r\n")
    m = parse_message(data)
    assert m.user_agent == "sipcluster bench/1.0"
    assert m.to_bytes() == data


def test_known_name_without_colon_is_rejected():
    # "Via" alone is a cached header name; the missing colon must still count.
    data = OPTIONS.replace(b"Accept: application/sdp\r\n", b"Via\r\n")
    with pytest.raises(ParseError, match="header line without a colon"):
        parse_message(data)


def test_continuation_before_any_field_is_rejected():
    data = OPTIONS.replace(b"SIP/2.0\r\nVia", b"SIP/2.0\r\n Via", 1)
    with pytest.raises(ParseError, match="continuation line before any header field"):
        parse_message(data)


def test_only_tokens_enter_the_header_name_cache():
    # The parser spots continuation lines by their missing from this cache.
    for name in (" Via", "\tVia", "Vi a"):
        with pytest.raises(ParseError):
            header_key(name)
        assert name not in _KEY_CACHE
    assert all(name and name[0] not in " \t" for name in _KEY_CACHE)


def test_first_missing_mandatory_field_is_named():
    data = OPTIONS.replace(b"CSeq: 63104 OPTIONS\r\n", b"").replace(b"Call-ID: a84b4c76e66710\r\n", b"")
    with pytest.raises(ParseError, match="missing Call-ID"):
        parse_message(data)
    with pytest.raises(ParseError, match="missing CSeq"):
        parse_message(OPTIONS.replace(b"CSeq: 63104 OPTIONS\r\n", b""))


@pytest.mark.parametrize("value,expected", [(b"0", 0), (b"70", 70), (b"255", 255), (b"300", 255),
                                            (b"00070", 70)])
def test_max_forwards_parsed_like_the_accessor(value, expected):
    m = parse_message(OPTIONS.replace(b"Max-Forwards: 70", b"Max-Forwards: " + value))
    assert m.max_forwards == expected == _rebuilt(m).max_forwards


@pytest.mark.parametrize("value", [b"-1", b"7O", b"0x10", b"1 2"])
def test_bad_max_forwards_and_content_length_rejected(value):
    with pytest.raises(ParseError, match="malformed Max-Forwards"):
        parse_message(OPTIONS.replace(b"Max-Forwards: 70", b"Max-Forwards: " + value))
    with pytest.raises(ParseError, match="malformed Content-Length"):
        parse_message(OPTIONS.replace(b"Content-Length: 0", b"Content-Length: " + value))


def test_parsed_response_has_every_message_slot():
    m = parse_message(RESPONSE)
    assert (m.status, m.reason) == (180, "Ringing")
    assert m.body == b"" and m._raw == RESPONSE and m._index is not None
    clone = m.copy()
    clone.set("Max-Forwards", 5)
    assert clone.to_bytes().startswith(b"SIP/2.0 180 Ringing\r\n")


# -- drafts retyped to frozen dataclasses -----------------------------------------

VIAS = ["SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds;rport",
        "SIP/2.0/tcp 192.0.2.1", "SIP / 2.0 / TLS [2001:db8::1]:5061 ;received=192.0.2.9",
        "XSIP/3.0/UDP h;ttl=3;maddr=224.0.0.1"]
ADDRESSES = ['"Alice" <sip:alice@atlanta.example.com>;tag=1928301774', "Bob <sip:bob@b.example>",
             "<sips:x@y:5061;transport=tcp;lr>;expires=60", 'A B <sip:c@d>', '"a\\"b" <tel:+1-555>']
URIS = ["sip:bob@biloxi.example.com", "sips:h.example:5061;lr;transport=tcp", "sip:192.0.2.1",
        "sip:u;x=1@h"]


def _assert_same_as_init(value, cls):
    assert type(value) is cls
    fields = dataclasses.fields(cls)
    built = cls(**{f.name: getattr(value, f.name) for f in fields if f.init})
    for f in fields:
        assert getattr(value, f.name) == getattr(built, f.name), f.name
    assert value == built and hash(value) == hash(built) and repr(value) == repr(built)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(value, fields[0].name, getattr(value, fields[0].name))
    assert pickle.loads(pickle.dumps(value)) == value
    assert dataclasses.replace(value) == value


@pytest.mark.parametrize("draft,cls", [(_ViaDraft, Via), (_CSeqDraft, CSeq),
                                       (_NameAddressDraft, NameAddress), (_SipURIDraft, SipURI)])
def test_draft_has_the_layout_of_its_dataclass(draft, cls):
    assert draft.__slots__ == cls.__slots__
    assert {f.name for f in dataclasses.fields(cls)} == set(cls.__slots__)


@pytest.mark.parametrize("text", VIAS)
def test_parsed_via_is_a_real_via(text):
    _assert_same_as_init(parse_via(text), Via)


@pytest.mark.parametrize("text", ADDRESSES)
def test_parsed_address_is_a_real_name_address(text):
    address = parse_name_addr(text)
    _assert_same_as_init(address, NameAddress)
    assert str(parse_name_addr(str(address))) == str(address)


@pytest.mark.parametrize("text", URIS)
def test_parsed_uri_is_a_real_sip_uri(text):
    parse_uri.cache_clear()
    uri = parse_uri(text)
    _assert_same_as_init(uri, SipURI)
    assert uri._key is None or isinstance(uri._key, tuple)
    assert str(uri) == text


def test_parsed_cseq_is_a_real_cseq():
    _assert_same_as_init(parse_cseq("314159 INVITE"), CSeq)


@pytest.mark.parametrize("digits", ["²", "٣", "1²"])
@pytest.mark.parametrize("field", ["Max-Forwards", "Content-Length", "Expires"])
def test_non_ascii_digits_are_a_parse_error(field, digits):
    # str.isdigit() accepts '²' (int() rejects it) and '٣' (int() takes it):
    # neither is a DIGIT of RFC 3261 §25.1, and only ParseError may come out.
    data = (b"OPTIONS sip:a@example.com SIP/2.0\r\nVia: SIP/2.0/UDP h.example.com;branch=z9hG4bK1\r\n"
            b"From: <sip:a@example.com>;tag=1\r\nTo: <sip:a@example.com>\r\nCall-ID: nd\r\n"
            b"CSeq: 1 OPTIONS\r\n" + f"{field}: {digits}\r\n\r\n".encode())
    with pytest.raises(ParseError) as caught:
        message = parse_message(data)
        _ = message.max_forwards, message.expires
    assert caught.value.status == 400 and field in caught.value.reason
