"""Stream framing (RFC 3261 §18.3) and the Call-ID fast path."""

from __future__ import annotations

import pytest

from cluster.sip import KEEPALIVE, ParseError, StreamFramer, extract_call_id, parse_message
from tests.sip.samples import INVITE, OPTIONS, RESPONSE


def test_split_at_every_byte_boundary_reassembles():
    for cut in range(1, len(INVITE)):
        framer = StreamFramer()
        out = framer.feed(INVITE[:cut]) + framer.feed(INVITE[cut:])
        assert out == [INVITE], cut
        assert framer.buffered == 0


def test_byte_at_a_time():
    framer = StreamFramer()
    out = []
    for i in range(len(OPTIONS)):
        out += framer.feed(OPTIONS[i:i + 1])
    assert out == [OPTIONS]


def test_pipelined_messages_and_keepalives():
    framer = StreamFramer()
    out = framer.feed(b"\r\n" + INVITE + KEEPALIVE + OPTIONS + b"\r\n" + RESPONSE + INVITE[:100])
    assert out == [INVITE, KEEPALIVE, OPTIONS, RESPONSE]
    assert framer.keepalives == 1
    assert framer.feed(INVITE[100:]) == [INVITE]


def test_oversized_message_rejected():
    framer = StreamFramer(max_message=500)
    with pytest.raises(ParseError) as info:
        framer.feed(INVITE)
    assert info.value.status == 513
    framer = StreamFramer(max_message=500)
    with pytest.raises(ParseError):
        framer.feed(b"X" * 501)


def test_missing_or_conflicting_content_length_closes_stream():
    with pytest.raises(ParseError):
        StreamFramer().feed(OPTIONS.replace(b"Content-Length: 0\r\n", b""))
    with pytest.raises(ParseError):
        StreamFramer().feed(OPTIONS.replace(b"Content-Length: 0\r\n", b"Content-Length: 0\r\nl: 5\r\n"))
    with pytest.raises(ParseError):
        StreamFramer().feed(OPTIONS.replace(b"Content-Length: 0", b"Content-Length: -5"))


def test_garbage_between_messages_is_skipped_and_counted():
    framer = StreamFramer()
    garbage = b"\x16\x03\x01 not sip at all\r\n\r\n"
    out = framer.feed(OPTIONS + garbage + OPTIONS)
    assert out == [OPTIONS, OPTIONS]
    assert framer.garbage_bytes == len(garbage)


def test_extract_call_id_forms():
    assert extract_call_id(INVITE) == b"a84b4c76e66710@pc33.atlanta.example.com"
    assert extract_call_id(OPTIONS.replace(b"Call-ID:", b"i:")) == b"a84b4c76e66710"
    assert extract_call_id(OPTIONS.replace(b"Call-ID:", b"cALL-iD   :")) == b"a84b4c76e66710"
    folded = OPTIONS.replace(b"Call-ID: a84b4c76e66710", b"Call-ID:\r\n  a84b4c76e66710")
    assert extract_call_id(folded) == b"a84b4c76e66710"
    assert parse_message(folded).call_id == "a84b4c76e66710"
    assert extract_call_id(b"\r\n\r\n" + OPTIONS) == b"a84b4c76e66710"
    # A Call-ID-looking line in the body is not a header.
    body_only = OPTIONS.replace(b"Call-ID: a84b4c76e66710\r\n", b"") + b"Call-ID: nope\r\n"
    with pytest.raises(ParseError):
        extract_call_id(body_only)
    with pytest.raises(ParseError):
        extract_call_id(b"")
