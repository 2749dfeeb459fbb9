"""Values built to hurt the parser: digit strings longer than int() takes,
numbers out of their field's range, and text that made a pattern backtrack
quadratically. Each is answered by a ParseError or read as no value, never
another exception, and none stalls the caller (a worker's event loop)."""

from __future__ import annotations

import time

import pytest

from cluster.sip import parse_message
from cluster.sip.errors import ParseError
from cluster.sip.framing import StreamFramer
from cluster.sip.grammar import digits_param, digits_to_int

HUGE = "9" * 5000  # past CPython's 4,300-digit limit for int()


def message(extra: str = "", *, method: str = "OPTIONS", uri: str = "sip:bob@localhost",
            via_params: str = "", from_: str = "<sip:a@b>;tag=1", to: str = "<sip:b@c>",
            length: bool = True) -> bytes:
    lines = [f"{method} {uri} SIP/2.0",
             f"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK1{via_params}",
             f"From: {from_}", f"To: {to}", "Call-ID: hostile-1", f"CSeq: 1 {method}"]
    if extra:
        lines.append(extra)
    if length:
        lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_digit_helpers_clamp_without_converting_long_strings():
    assert digits_to_int(HUGE, 255) == 255
    assert digits_to_int("0" * 5000 + "70", 255) == 70, "leading zeros do not count"
    assert digits_to_int("300", 255) == 255
    assert digits_param(HUGE, 65535) is None
    assert digits_param("65536", 65535) is None
    assert digits_param("65535", 65535) == 65535
    assert digits_param("", 65535) is None and digits_param("1x", 65535) is None
    assert digits_param("²", 65535) is None  # a digit to str.isdigit, not to int()


def test_huge_numbers_in_header_fields_are_clamped_or_refused():
    assert parse_message(message(f"Max-Forwards: {HUGE}")).max_forwards == 255
    assert parse_message(message(f"Expires: {HUGE}")).expires == 0xFFFFFFFF
    assert parse_message(message(f"Min-Expires: {HUGE}")).min_expires == 0xFFFFFFFF
    with pytest.raises(ParseError, match="Content-Length"):
        parse_message(message(f"Content-Length: {HUGE}", length=False))
    retry = parse_message(message(f"Retry-After: 5;duration={HUGE}")).retry_after
    assert retry.seconds == 5 and retry.duration is None


def test_huge_numbers_in_parameters_read_as_no_value():
    contact = parse_message(message(f"Contact: <sip:a@b>;expires={HUGE};reg-id={HUGE}",
                                    method="REGISTER")).contacts[0]
    assert contact.expires == 0xFFFFFFFF
    assert contact.reg_id is None, "RFC 5626 reg-id is at most 2**31 - 1"
    via = parse_message(message(via_params=f";rport={HUGE};ttl={HUGE}")).via
    assert via.has_rport and via.rport is None and via.ttl is None


@pytest.mark.parametrize("rport", ["70000", "18446744073709551616"])
def test_an_rport_that_is_no_port_is_ignored(rport):
    # Routing a response by it handed the socket layer a port it refuses.
    via = parse_message(message(via_params=f";rport={rport}")).via
    assert via.rport is None and via.port == 5061


def test_stream_framer_refuses_a_content_length_past_any_size():
    framer = StreamFramer()
    with pytest.raises(ParseError) as raised:
        framer.feed(message(f"Content-Length: {HUGE}", length=False))
    assert raised.value.status == 513


# Each took 0.5-2.3 s at 32 KB before the patterns were made linear, growing
# with the square of the length; now well under a millisecond.
N = 60_000
SLOW_BEFORE = {
    "tel number in the Request-URI": message(uri="tel:" + "1" * N + "!"),
    "global tel number in the Request-URI": message(uri="tel:+" + "1" * N + "!"),
    "tel number in From": message(from_="<tel:" + "1" * N + "!>;tag=1"),
    "display name of tabs without <URI>": message(from_="a" + "\t" * N + "x"),
    "display name of spaces without <URI>": message(to="a" + " " * N + "x"),
}


@pytest.mark.parametrize("name", list(SLOW_BEFORE))
def test_long_hostile_values_fail_fast(name):
    start = time.perf_counter()
    with pytest.raises(ParseError):
        parse_message(SLOW_BEFORE[name])
    # A bound ~1,000× the fixed parser's time and a fraction of the old one
    # (~8 s at this length): it holds on a loaded machine and fails on a
    # quadratic pattern.
    assert time.perf_counter() - start < 1.5, f"{name}: parse took too long"


def test_display_names_still_parse_on_the_fast_path():
    m = parse_message(message(from_='  Alice Smith \t<sip:alice@example.com>;tag=9',
                              to='"Bob" <sip:bob@example.com>'))
    assert m.from_.display_name == "Alice Smith" and m.from_.tag == "9"
    assert m.to.display_name == "Bob"
    assert parse_message(message(from_="<sip:a@b>;tag=1")).from_.display_name is None
