"""Property tests for the parsers: any bytes give a message or ParseError,
valid messages round-trip, and the Call-ID fast path agrees with the parser."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster.sip import ParseError, StreamFramer, extract_call_id, parse_message
from tests.sip.samples import INVITE, OPTIONS, RESPONSE

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

token = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~",
                min_size=1, max_size=12)
host = st.from_regex(r"[a-z][a-z0-9]{0,8}(\.[a-z][a-z0-9]{0,8}){0,2}", fullmatch=True)
callid_word = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-.!%*_+`'~()<>:\\\"/[]?{}",
                      min_size=1, max_size=30)
ws = st.sampled_from(["", " ", "  ", "\t", "\r\n ", " \r\n\t"])


def _mutations(seed: bytes):
    return st.builds(
        lambda pos, junk, cut: seed[:pos] + junk + seed[pos + cut:],
        st.integers(0, len(seed)), st.binary(max_size=12), st.integers(0, 8),
    )


@SETTINGS
@given(st.one_of(st.binary(max_size=400), _mutations(INVITE), _mutations(OPTIONS),
                 _mutations(RESPONSE)))
def test_any_bytes_give_message_or_parse_error(data):
    try:
        message = parse_message(data)
    except ParseError as error:
        assert 400 <= error.status < 600
        return
    # Anything accepted serialises and re-parses to the same key fields, and
    # the edge's fast path finds the same Call-ID.
    again = parse_message(message.to_bytes())
    assert again.call_id == message.call_id
    assert extract_call_id(data) == message.call_id.encode("utf-8", "surrogateescape")


@SETTINGS
@given(st.binary(max_size=300))
def test_extract_call_id_never_raises_anything_else(data):
    try:
        value = extract_call_id(data)
    except ParseError:
        return
    assert value and value == value.strip(b" \t")


@st.composite
def requests(draw):
    method = draw(st.sampled_from(["INVITE", "OPTIONS", "REGISTER", "BYE", "MESSAGE"]) | token)
    user = draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.!~*'()&=+$,;?/",
                        min_size=1, max_size=12))
    callid = draw(callid_word) + draw(st.sampled_from(["", "@"])) + draw(st.just("") | callid_word)
    callid_name = draw(st.sampled_from(["Call-ID", "call-id", "i", "CALL-ID", "Call-Id"]))
    body = draw(st.binary(max_size=40))
    n_via = draw(st.integers(1, 3))
    vias = "".join(
        f"Via:{draw(ws)}SIP/2.0/{draw(st.sampled_from(['UDP', 'TCP', 'TLS']))} "
        f"{draw(host)}:{draw(st.integers(1, 65535))};branch=z9hG4bK{draw(token)}\r\n"
        for _ in range(n_via)
    )
    extra = "".join(f"X-{draw(token)}:{draw(ws)}{draw(token)}\r\n" for _ in range(draw(st.integers(0, 3))))
    head = (
        f"{method} sip:{user}@{draw(host)} SIP/2.0\r\n"
        f"{vias}"
        f"From:{draw(ws)}<sip:a@{draw(host)}>;tag={draw(token)}\r\n"
        f"To:{draw(ws)}<sip:{user}@{draw(host)}>\r\n"
        f"{callid_name}{draw(st.sampled_from(['', ' ']))}:{draw(ws)}{callid}\r\n"
        f"CSeq: {draw(st.integers(0, 2**32 - 1))} {method}\r\n"
        f"Max-Forwards: {draw(st.integers(0, 255))}\r\n"
        f"{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body, callid, n_via, body


@SETTINGS
@given(requests())
def test_generated_requests_round_trip(sample):
    data, callid, n_via, body = sample
    message = parse_message(data)
    assert message.to_bytes() == data
    assert message.call_id == callid
    assert extract_call_id(data) == callid.encode()
    assert len(message.vias) == n_via and message.body == body
    # A modified message still parses to the same content.
    message.set("Max-Forwards", 7)
    again = parse_message(message.to_bytes())
    assert again.max_forwards == 7 and again.call_id == callid and again.body == body
    # Any split of the bytes over a stream frames back the same message.
    framer = StreamFramer()
    cut = len(data) // 3
    assert framer.feed(data[:cut]) + framer.feed(data[cut:]) == [data]


@SETTINGS
@given(st.lists(st.binary(max_size=60), max_size=8))
def test_framer_never_raises_anything_else(chunks):
    framer = StreamFramer(max_message=2000)
    try:
        for chunk in chunks:
            for message in framer.feed(chunk):
                assert message
    except ParseError:
        pass
