"""URI parsing, serialization and RFC 3261 §19.1.4 / RFC 3966 §4 equality."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.sip import uri as uri_module
from cluster.sip.errors import ParseError
from cluster.sip.uri import AbsoluteURI, SipURI, TelURI, parse_uri, unescape

CORPUS = Path(__file__).resolve().parents[1] / "conformance"

# --- RFC 3261 §19.1.4 examples ----------------------------------------------

EQUAL_GROUPS = [
    ["sip:%61lice@atlanta.com;transport=TCP", "sip:alice@AtLanTa.CoM;Transport=tcp"],
    ["sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5", "sip:carol@chicago.com;security=on"],
    [
        "sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
        "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com",
    ],
    [
        "sip:alice@atlanta.com?subject=project%20x&priority=urgent",
        "sip:alice@atlanta.com?priority=urgent&subject=project%20x",
    ],
]

NOT_EQUAL_PAIRS = [
    ("SIP:ALICE@AtLanTa.CoM;Transport=udp", "sip:alice@AtLanTa.CoM;Transport=UDP"),  # user
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"),  # port
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp"),  # transport
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:6000;transport=tcp"),  # both
    ("sip:carol@chicago.com", "sip:carol@chicago.com?Subject=next%20meeting"),  # header
    ("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4"),  # no DNS in equality
]


@pytest.mark.parametrize("group", EQUAL_GROUPS)
def test_rfc3261_equal_examples(group: list[str]) -> None:
    uris = [parse_uri(text) for text in group]
    for a in uris:
        for b in uris:
            assert a == b
            assert hash(a) == hash(b)


@pytest.mark.parametrize(("left", "right"), NOT_EQUAL_PAIRS)
def test_rfc3261_not_equal_examples(left: str, right: str) -> None:
    assert parse_uri(left) != parse_uri(right)
    assert parse_uri(right) != parse_uri(left)


@pytest.mark.parametrize("name", ["user=phone", "ttl=1", "method=INVITE", "maddr=192.0.2.1", "transport=udp"])
def test_params_that_must_be_in_both(name: str) -> None:
    assert parse_uri("sip:a@example.com") != parse_uri(f"sip:a@example.com;{name}")


def test_other_params_compared_only_when_in_both() -> None:
    assert parse_uri("sip:a@example.com;x=1") == parse_uri("sip:a@example.com;y=2")
    assert parse_uri("sip:a@example.com;x=1") != parse_uri("sip:a@example.com;X=2")
    assert parse_uri("sip:a@example.com;x=ABC") == parse_uri("sip:a@example.com;X=abc")


def test_sip_and_sips_never_equal() -> None:
    assert parse_uri("sip:a@example.com") != parse_uri("sips:a@example.com")


def test_password_is_case_sensitive_and_part_of_identity() -> None:
    assert parse_uri("sip:a:Secret@example.com") != parse_uri("sip:a:secret@example.com")
    assert parse_uri("sip:a:secret@example.com") != parse_uri("sip:a@example.com")
    assert parse_uri("sip:a:s%65cret@example.com") == parse_uri("sip:a:secret@example.com")


def test_headers_compare_as_a_set_with_case_insensitive_names() -> None:
    assert parse_uri("sip:a@b.com?Subject=x&Priority=y") == parse_uri("sip:a@b.com?priority=y&subject=x")
    assert parse_uri("sip:a@b.com?Subject=x") != parse_uri("sip:a@b.com?Subject=x&Priority=y")


def test_equality_against_other_types() -> None:
    assert parse_uri("sip:a@b.com") != "sip:a@b.com"
    assert parse_uri("sip:a@b.com") != parse_uri("tel:+1234")


# --- RFC 4475 escapes (esc01, escnull) and semiuri ---------------------------


def test_esc01_escapes_equal_their_characters() -> None:
    assert parse_uri("sip:%75se%72@example.com") == parse_uri("sip:user@example.com")
    contact = parse_uri("sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31")
    assert contact == parse_uri("sip:caller@host5.example.net;lr;name=value%2541")
    assert contact.lr
    # No recursive unescaping: the value is the text "value%41", not "valueA".
    assert contact != parse_uri("sip:caller@host5.example.net;lr;name=valueA")
    assert contact.param("name") == "v%61lue%25%34%31"


def test_escape_hex_case_is_irrelevant_but_reserved_escapes_stay_distinct() -> None:
    assert parse_uri("sip:a%3ab@example.com") == parse_uri("sip:a%3Ab@example.com")
    # ';' is reserved (RFC 2396), so its escape is not equivalent to it.
    assert parse_uri("sip:a%3Bb@example.com") != parse_uri("sip:a;b@example.com")
    assert parse_uri("sip:a%253B@example.com") != parse_uri("sip:a%3B@example.com")


def test_escnull_keeps_distinct_users() -> None:
    one = parse_uri("sip:%00@host5.example.com")
    two = parse_uri("sip:%00%00@host5.example.com")
    assert one != two
    assert one.aor() == "sip:%00@host5.example.com"
    assert two.aor() == "sip:%00%00@host5.example.com"
    assert parse_uri("sip:null-%00-null@example.com").user == "null-%00-null"


def test_esc01_request_uri_user() -> None:
    uri = parse_uri("sip:sips%3Auser%40example.com@example.net")
    assert isinstance(uri, SipURI)
    assert (uri.scheme, uri.user, uri.host) == ("sip", "sips%3Auser%40example.com", "example.net")
    assert unescape(uri.user) == "sips:user@example.com"


def test_semiuri_user_keeps_semicolon() -> None:
    uri = parse_uri("sip:user;par=u%40example.net@example.com")
    assert isinstance(uri, SipURI)
    assert uri.user == "user;par=u%40example.net"
    assert uri.host == "example.com"
    assert uri.params == ()
    assert unescape(uri.user) == "user;par=u@example.net"


def test_intmeth_user_and_password() -> None:
    text = (
        "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:"
        "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com"
    )
    uri = parse_uri(text)
    assert isinstance(uri, SipURI)
    assert uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert uri.host == "example.com"
    assert str(uri) == text


def test_escaped_headers_are_kept() -> None:
    uri = parse_uri("sip:user@example.com?Route=%3Csip:sip.example.com%3E")
    assert isinstance(uri, SipURI)
    assert uri.headers == (("Route", "%3Csip:sip.example.com%3E"),)
    assert uri.without_headers() == parse_uri("sip:user@example.com")


# --- IPv6, RFC 5118 ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("sip:[2001:db8::10]", "[2001:db8::10]", None),
        ("sip:user@[2001:db8::10]", "[2001:db8::10]", None),
        ("sip:user@[2001:db8::192.0.2.1]", "[2001:db8::192.0.2.1]", None),
        ("sip:user@[2001:db8:::192.0.2.1]", "[2001:db8:::192.0.2.1]", None),
        ("sip:ted@[::ffff:192.0.2.2]", "[::ffff:192.0.2.2]", None),
        ("sip:[2001:db8::10:5070]", "[2001:db8::10:5070]", None),
        ("sip:[2001:db8::10]:5070", "[2001:db8::10]", 5070),
    ],
)
def test_ipv6_references(text: str, host: str, port: int | None) -> None:
    uri = parse_uri(text)
    assert isinstance(uri, SipURI)
    assert (uri.host, uri.port) == (host, port)
    assert str(uri) == text


def test_ipv6_three_colon_form_equals_two_colon_form() -> None:
    assert parse_uri("sip:user@[2001:db8:::192.0.2.1]") == parse_uri("sip:user@[2001:db8::192.0.2.1]")
    assert parse_uri("sip:[2001:DB8:0::10]") == parse_uri("sip:[2001:db8::10]")
    assert parse_uri("sip:[2001:db8::10:5070]") != parse_uri("sip:[2001:db8::10]:5070")


@pytest.mark.parametrize(
    "text",
    ["sip:user@2001:db8::10", "sip:2001:db8::10", "sip:[2001:db8::10", "sip:[2001:db8::g]", "sip:[1:2:3]",
     "sip:[2001:db8::10]5070", "sip:[::1]:", "sip:[2001:db8:::10]"],
)
def test_bad_ipv6(text: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_uri(text)
    assert info.value.status == 400


# --- rejections --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("sip:user@example.com; lr", "whitespace"),
        ("sip:user@example.com;\tlr", "whitespace"),
        ("sip:us er@example.com", "whitespace"),
        ("<sip:user@example.com>", "'<'"),
        ("sip:user@example.com>", "'>'"),
        ("sip:user@example.com:50x0", "port"),
        ("sip:user@example.com:65536", "port"),
        ("sip:user@example.com:", "port"),
        ("sip:user@example.com:123456", "port"),
        ("sip:", "host"),
        ("sip:user@", "host"),
        ("sip:user@:5060", "host"),
        ("sip:user@;lr", "host"),
        ("sip:%4@example.com", "escape"),
        ("sip:%zz@example.com", "escape"),
        ("sip:a@example.com;x=%G1", "escape"),
        ("sip:a@example.com?h=%", "header"),
        ("user@example.com", "scheme"),
        (":user@example.com", "scheme"),
        ("example.com", "scheme"),
        ("sip:@example.com", "user"),
        ("sip:a\"b@example.com", "user"),
        ("sip:a@exa mple.com", "whitespace"),
        ("sip:a@exa!mple.com", "host"),
        ("sip:a@-example.com", "host"),
        ("sip:a@example..com", "host"),
        ("sip:a@256.1.1.1", "IPv4"),
        ("sip:a@1.2.3", "IPv4"),
        ("sip:a@example.com;", "parameter"),
        ("sip:a@example.com;x=", "parameter"),
        ("sip:a@example.com;=x", "parameter"),
        ("sip:a@example.com?", "header"),
        ("sip:a@example.com?novalue", "header"),
        ("sip:a@example.com?a=b&", "header"),
        ("tel:", "number"),
        ("tel:+", "number"),
        ("tel:xyz", "number"),
        ("tel:+1234;=x", "parameter"),
        ("tel:+1234;a b", "whitespace"),
        ("im:", "im:"),
        ("im:a\"b", "im:"),
        ("http://%zz", "escape"),
    ],
)
def test_rejections(text: str, fragment: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_uri(text)
    assert info.value.status == 400
    assert fragment.lower() in info.value.reason.lower()


# --- accessors and builders --------------------------------------------------


def test_parameter_accessors() -> None:
    uri = parse_uri("sip:+1234@gw.example.com;User=Phone;TRANSPORT=TCP;lr;maddr=239.255.255.1;x")
    assert isinstance(uri, SipURI)
    assert uri.transport == "tcp"
    assert uri.user_param == "phone"
    assert uri.lr is True
    assert uri.maddr == "239.255.255.1"
    assert uri.param("x") == ""
    assert uri.param("LR") == ""
    assert uri.param("missing") is None
    assert uri.has_param("Transport") and not uri.has_param("ttl")
    plain = parse_uri("sip:a@example.com")
    assert isinstance(plain, SipURI)
    assert (plain.transport, plain.lr, plain.maddr, plain.user_param) == (None, False, None, None)


def test_builders() -> None:
    uri = parse_uri("sip:a@example.com;transport=udp;x=1")
    assert isinstance(uri, SipURI)
    assert str(uri.with_param("lr")) == "sip:a@example.com;transport=udp;x=1;lr"
    assert str(uri.with_param("Transport", "tcp")) == "sip:a@example.com;Transport=tcp;x=1"
    assert str(uri.without_param("TRANSPORT")) == "sip:a@example.com;x=1"
    assert uri.without_param("nope") is uri
    moved = dataclasses.replace(uri, host="b.example.com", port=5070)
    assert str(moved) == "sip:a@b.example.com:5070;transport=udp;x=1"
    assert moved != uri
    assert str(uri) == "sip:a@example.com;transport=udp;x=1"  # unchanged


def test_host_port_defaults() -> None:
    assert parse_uri("sip:a@example.com").host_port == ("example.com", 5060)
    assert parse_uri("sips:a@example.com").host_port == ("example.com", 5061)
    assert parse_uri("sips:a@example.com:6000").host_port == ("example.com", 6000)
    assert parse_uri("sip:[::1]:5080").host_port == ("[::1]", 5080)


def test_aor() -> None:
    assert parse_uri("sip:%61lice:pw@AtLanTa.COM:5070;transport=tcp?x=y").aor() == "sip:alice@atlanta.com:5070"
    assert parse_uri("sips:Bob@Biloxi.com;lr").aor() == "sips:Bob@biloxi.com"
    assert parse_uri("sip:Example.COM").aor() == "sip:example.com"
    assert parse_uri("sip:u@[2001:DB8:0::1]").aor() == "sip:u@[2001:db8::1]"


def test_scheme_is_case_insensitive() -> None:
    uri = parse_uri("SIPS:alice@example.com")
    assert isinstance(uri, SipURI) and uri.scheme == "sips"
    assert isinstance(parse_uri("TEL:+1234"), TelURI)
    assert parse_uri("Im:alice@example.com") == AbsoluteURI("im", "alice@example.com")


def test_parse_is_cached() -> None:
    text = "sip:cache-probe@example.com;transport=tcp"
    assert parse_uri(text) is parse_uri(text)


# --- round trip --------------------------------------------------------------

ROUND_TRIP = [
    "sip:alice@atlanta.example.com;transport=tcp",
    "sips:bob@biloxi.example.com:5061",
    "sip:registrar.example.com",
    "sip:127.0.0.1:5080",
    "sip:alice:secret@atlanta.com;lr;maddr=239.255.255.1;ttl=15",
    "sip:services.example.com;lr;unknownwith=value;unknown-no-value",
    "sip:+13035551111@ift.client.example.net;user=phone",
    "sip:I%20have%20spaces@example.net",
    "sip:alice@atlanta.com?subject=project%20x&priority=urgent",
    "sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
    "sip:user@example.com:6000;unknownparam1=verylongvalue;ParameterNameWithNoValue",
    "sip:*67%23123@pbx.example.com",
    "sip:*21#@pbx.example.com",
    "sip:host_with_underscore.example.com",
    "sip:alice@example.com.",
    "sip:a@example.com;maddr=[2001:db8::1]",
    "tel:+1-201-555-0123",
    "tel:7042;phone-context=example.com",
    "tel:863-1234;phone-context=+1-914-555;ext=22;isub=x",
    "nobodyknowsthisscheme:totallyopaquecontent",
    "soap.beep://192.0.2.103:3002",
    "im:alice@example.com",
    "http://www.example.com/a?b=c#frag",
    "isbn:2983792873",
    "urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6",
]


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_round_trip(text: str) -> None:
    assert str(parse_uri(text)) == text


def test_request_uris_of_the_conformance_corpus() -> None:
    """Every Request-URI in RFC 4475 / RFC 5118 parses, except the two bad ones."""
    rejected = set()
    seen = 0
    for folder in ("rfc4475", "rfc5118"):
        manifest = json.loads((CORPUS / folder / "manifest.json").read_text())
        for entry in manifest["messages"]:
            first = (CORPUS / folder / entry["file"]).read_bytes().split(b"\r\n", 1)[0]
            parts = first.decode("utf-8").split(" ")
            if len(parts) != 3 or not parts[2].startswith("SIP/") or parts[0].startswith("SIP/"):
                continue  # responses, and lines whose LWS faults lie outside the URI
            seen += 1
            try:
                parse_uri(parts[1])
            except ParseError:
                rejected.add(entry["name"])
    assert seen > 50
    assert rejected == {"ipv6-bad", "ltgtruri"}


# --- tel and absolute URIs ---------------------------------------------------


def test_tel_fields() -> None:
    uri = parse_uri("tel:863-1234;phone-context=+1-914-555;ext=22")
    assert isinstance(uri, TelURI)
    assert uri.number == "863-1234"
    assert not uri.is_global and uri.scheme == "tel"
    assert uri.param("PHONE-CONTEXT") == "+1-914-555"
    assert uri.has_param("ext") and uri.param("isub") is None
    assert parse_uri("tel:+1-201-555-0123").is_global  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ("tel:+1-201-555-0123", "tel:+12015550123"),
        ("tel:+1(201)555.0123", "tel:+12015550123"),
        ("tel:7042;phone-context=example.com", "tel:7042;PHONE-CONTEXT=EXAMPLE.COM"),
        ("tel:863-1234;phone-context=+1-914-555", "tel:8631234;phone-context=+1914555"),
        ("tel:+1234;ext=1-2;isub=ab", "tel:+1234;isub=AB;ext=12"),
        ("tel:12ab;phone-context=x.com", "tel:12AB;phone-context=x.com"),
    ],
)
def test_tel_equal(left: str, right: str) -> None:
    assert parse_uri(left) == parse_uri(right)
    assert hash(parse_uri(left)) == hash(parse_uri(right))


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ("tel:+1234", "tel:+12345"),
        ("tel:+1234", "tel:1234"),
        ("tel:+1234", "tel:+1234;ext=1"),
        ("tel:1234;phone-context=a.com", "tel:1234;phone-context=b.com"),
    ],
)
def test_tel_not_equal(left: str, right: str) -> None:
    assert parse_uri(left) != parse_uri(right)


def test_absolute_uris() -> None:
    uri = parse_uri("nobodyKnowsThisScheme:totallyopaquecontent")
    assert uri == AbsoluteURI("nobodyknowsthisscheme", "totallyopaquecontent")
    assert str(uri) == "nobodyknowsthisscheme:totallyopaquecontent"
    beep = parse_uri("soap.beep://192.0.2.103:3002")
    assert isinstance(beep, AbsoluteURI)
    assert (beep.scheme, beep.rest) == ("soap.beep", "//192.0.2.103:3002")
    assert parse_uri("im:a@example.com") != parse_uri("im:b@example.com")


# --- unescape ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain", "plain"),
        ("I%20have%20spaces", "I have spaces"),
        ("%75se%72", "user"),
        ("value%2541", "value%41"),  # decoded once, never recursively
        ("%C3%A9t%c3%a9", "été"),
        ("null-%00-null", "null-\x00-null"),
        ("%", None),
        ("%4", None),
        ("a%zzb", None),
        ("%FF", None),
    ],
)
def test_unescape(text: str, expected: str | None) -> None:
    if expected is None:
        with pytest.raises(ParseError):
            unescape(text)
    else:
        assert unescape(text) == expected


# --- properties (hypothesis) -------------------------------------------------

URI_ALPHABET = "sipte:@;?=&%[]+-._!~*'()$,/#<> \t0123456789abcdefABCDEFxyzSIP"
uri_like = st.one_of(
    st.text(alphabet=URI_ALPHABET, max_size=40),
    st.builds(lambda tail: "sip:" + tail, st.text(alphabet=URI_ALPHABET, max_size=40)),
    st.builds(lambda tail: "tel:" + tail, st.text(alphabet=URI_ALPHABET, max_size=20)),
)


def _parse_or_none(text: str) -> object:
    try:
        return uri_module.parse_uri.__wrapped__(text)
    except ParseError as exc:
        assert exc.status == 400 and exc.reason
        return None


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=60), uri_like))
def test_any_text_gives_a_uri_or_parse_error(text: str) -> None:
    result = _parse_or_none(text)
    assert result is None or isinstance(result, (SipURI, TelURI, AbsoluteURI))


@settings(max_examples=400, deadline=None)
@given(uri_like)
def test_fast_path_agrees_with_careful_parser(text: str) -> None:
    match = uri_module._FAST_SIP.fullmatch(text)
    if match is None:
        return
    try:
        fast = uri_module._parse_fast(match)
    except ParseError:
        fast = None
    try:
        careful = uri_module._parse_careful(text)
    except ParseError:
        careful = None
    assert repr(fast) == repr(careful)


@settings(max_examples=400, deadline=None)
@given(uri_like)
def test_serialization_reparses_to_the_same_value(text: str) -> None:
    first = _parse_or_none(text)
    if first is None:
        return
    again = parse_uri(str(first))
    assert repr(again) == repr(first)
    assert again == first and hash(again) == hash(first)


def _escape_some(text: str, picks: list[bool]) -> str:
    """Escape unreserved characters, which §19.1.4 says changes nothing."""
    out = []
    for index, char in enumerate(text):
        if picks[index % len(picks)] and char.isalnum():
            out.append(f"%{ord(char):02x}")
        else:
            out.append(char)
    return "".join(out)


@settings(max_examples=200, deadline=None)
@given(
    user=st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True),
    host=st.from_regex(r"[a-z][a-z0-9]{0,6}\.[a-z]{2,4}", fullmatch=True),
    params=st.lists(st.sampled_from(["lr", "transport=tcp", "x=Ab", "user=phone"]), unique=True, max_size=3),
    picks=st.lists(st.booleans(), min_size=1, max_size=5),
)
def test_escaped_and_recased_variants_are_equal(user: str, host: str, params: list[str], picks: list[bool]) -> None:
    plain = parse_uri(f"sip:{user}@{host}" + "".join(f";{p}" for p in params))
    variant_params = "".join(f";{_escape_some(p, picks).upper()}" for p in reversed(params))
    variant = parse_uri(f"sip:{_escape_some(user, picks)}@{host.upper()}{variant_params}")
    assert plain == variant
    assert hash(plain) == hash(variant)
    assert plain.aor() == variant.aor()  # type: ignore[union-attr]


def test_reason_stays_short_for_huge_input() -> None:
    # The reason may become a Reason-Phrase or Warning text.
    with pytest.raises(ParseError) as info:
        parse_uri("sip:" + "a" * 50_000 + "!")
    assert len(info.value.reason) < 120
