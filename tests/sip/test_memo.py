"""Parsed header values are remembered by their text (cluster/sip/memo.py).

A remembered parse must be indistinguishable from a fresh one, malformed
values must fail every time, and the tables must stay bounded.
"""

from __future__ import annotations

import pytest

import cluster.sip.address as address_module
import cluster.sip.fields as fields_module
import cluster.sip.via as via_module
from cluster.sip import ParseError, parse_message
from cluster.sip.address import parse_name_addr
from cluster.sip.fields import parse_cseq
from cluster.sip.memo import LIMIT
from cluster.sip.via import parse_via, via_text
from tests.sip.test_parser_fast_paths import _accepted_corpus


def _fresh(parse, table: dict, value: str):
    saved = dict(table)
    table.clear()
    try:
        return parse(value)
    finally:
        table.clear()
        table.update(saved)


def test_the_same_text_gives_the_same_object_equal_to_a_fresh_parse():
    value = "SIP/2.0/UDP host.example.com:5060;branch=z9hG4bKmemo1;rport"
    first = parse_via(value)
    assert parse_via(value) is first
    assert _fresh(parse_via, via_module._MEMO, value) == first
    name_addr = '"Bob" <sip:bob@example.com>;tag=memo-1'
    assert parse_name_addr(name_addr) is parse_name_addr(name_addr, brackets_required=True)
    assert parse_cseq("77 OPTIONS") is parse_cseq("77 OPTIONS")


@pytest.mark.parametrize("parse,value", [
    (parse_via, "SIP/2.0/UDP"),
    (parse_name_addr, '"unterminated <sip:a@b>'),
    (parse_cseq, "99999999999 INVITE"),
])
def test_malformed_values_fail_every_time(parse, value):
    for _ in range(2):
        with pytest.raises(ParseError):
            parse(value)


def test_an_addr_spec_without_brackets_is_still_refused_where_brackets_are_required():
    assert parse_name_addr("sip:carol@example.com").uri is not None
    with pytest.raises(ParseError):
        parse_name_addr("sip:carol@example.com", brackets_required=True)


def test_tables_stay_bounded():
    for n in range(LIMIT + 10):
        parse_cseq(f"{n} INFO")
    assert 0 < len(fields_module._CSEQ_MEMO) <= LIMIT
    for n in range(LIMIT + 10):
        parse_name_addr(f"<sip:u{n}@example.com>;tag={n}")
    assert 0 < len(address_module._MEMO) <= LIMIT


@pytest.mark.parametrize("data", _accepted_corpus())
def test_every_via_we_write_reads_back_as_itself(data):
    # push_via and set_top_via remember the text they write as the parse of
    # the Via they were given; a fresh parse of that text must agree.
    for via in parse_message(data).vias:
        text = via_text(via)
        assert parse_via(text) is via
        assert _fresh(parse_via, via_module._MEMO, text) == via
