"""Removing the top Via from a parsed message edits its received bytes.

``pop_via`` on a message that still has its bytes from the wire (a relayed
response, §16.7 step 3) cuts the field's line out of them instead of
rendering every header field again. The result must be what rendering would
have produced.
"""

from __future__ import annotations

import pytest

from cluster.sip import parse_message
from tests.sip.samples import INVITE, OPTIONS, RESPONSE
from tests.sip.test_parser_fast_paths import _accepted_corpus

TWO_VIAS = (
    b"SIP/2.0 200 OK\r\n"
    b"v:  SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKabc;wk=w1\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1;rport=5061\r\n"
    b"Record-Route: <sip:127.0.0.1:5060;lr>\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\n"
    b"Call-ID: x@y\r\nCSeq: 1 INVITE\r\nContent-Length: 4\r\n\r\nbody"
)
FOLDED_LAST = (
    b"SIP/2.0 180 Ringing\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x@y\r\n"
    b"CSeq: 1 INVITE\r\nContent-Length: 0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060\r\n ;branch=z9hG4bKf\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKg\r\n\r\n"
)


def _fields(message) -> list[tuple[str, str]]:
    return [(h.key, h.value) for h in message.headers if h.key != "content-length"]


def _rendered(message) -> bytes:
    clone = message.copy()
    clone._raw = None
    return clone.to_bytes()


def _with_extra_via(data: bytes) -> bytes:
    """``data`` with one more Via on top (after CRLFs the parser ignores)."""
    body = data.lstrip(b"\r\n")
    start, _, rest = body.partition(b"\r\n")
    return start + b"\r\nVia: SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKextra\r\n" + rest


@pytest.mark.parametrize("data", [INVITE, OPTIONS, RESPONSE] + _accepted_corpus())
def test_splice_restores_the_message_before_the_extra_via(data):
    original = parse_message(data)
    stacked = parse_message(_with_extra_via(data))
    copy = stacked.copy()
    assert copy.pop_via().branch == "z9hG4bKextra"
    again = parse_message(copy.to_bytes())
    # A message without Content-Length is rendered, which adds one (§18.3).
    assert _fields(again) == _fields(original)
    assert again.body == original.body
    assert again.via == original.via
    # The stacked message keeps its bytes: the copy was edited, not it.
    assert stacked.via.branch == "z9hG4bKextra"


@pytest.mark.parametrize("data", [TWO_VIAS, FOLDED_LAST])
def test_splice_equals_rendering(data):
    copy = parse_message(data).copy()
    copy.pop_via()
    again = parse_message(copy.to_bytes())
    expected = parse_message(_rendered(copy))
    assert [(h.key, h.value) for h in again.headers] == [(h.key, h.value) for h in expected.headers]
    assert again.body == expected.body


def test_splice_keeps_bytes_and_removes_only_the_top_line():
    message = parse_message(TWO_VIAS)
    copy = message.copy()
    copy.pop_via()
    assert copy._raw is not None, "the received bytes were edited, not dropped"
    assert copy.to_bytes() == TWO_VIAS.replace(
        b"v:  SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKabc;wk=w1\r\n", b"")
    assert copy.via.branch == "z9hG4bK-1"


def test_folded_top_via_is_cut_whole():
    copy = parse_message(FOLDED_LAST).copy()
    assert copy.pop_via().branch == "z9hG4bKf"
    assert copy.to_bytes().endswith(b"Content-Length: 0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKg\r\n\r\n")


def test_without_content_length_the_message_is_rendered():
    # A datagram may omit Content-Length (§18.3); the relayed copy gets one.
    data = TWO_VIAS.replace(b"Content-Length: 4\r\n", b"")
    copy = parse_message(data).copy()
    copy.pop_via()
    assert b"Content-Length: 4\r\n" in copy.to_bytes()
