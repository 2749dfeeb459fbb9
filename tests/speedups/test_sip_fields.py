"""The parser's header-field loop, compiled (cluster/speedups/_sip.c),
against its specification ``cluster.sip.parser._header_fields``: the same
headers, groups and errors for generated, conformance and fuzzed header
sections. The C module is imported directly, whatever
SIPCLUSTER_PURE_PYTHON says; tests/sip runs on whichever parse_message
uses (compiled here, pure Python in tests/speedups/test_pure_python.py)."""

from __future__ import annotations

import random
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster import speedups
from cluster.sip import ParseError, parser
from cluster.speedups import _sip
from tests.e2e.test_wire_fuzz import mutate
from tests.sip.samples import INVITE, OPTIONS, RESPONSE
from tests.sip.test_properties import requests

ROOT = Path(__file__).resolve().parents[2]
CORPUS = [path.read_bytes() for name in ("rfc4475", "rfc5118")
          for path in sorted((ROOT / "tests" / "conformance" / name).glob("*.dat"))]
SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def outcome(fields, lines):
    try:
        headers, groups = fields(lines)
    except ParseError as error:
        return "ParseError", str(error), error.status
    return [(h.key, h.name, h.value, h.raw) for h in headers], groups


def lines_of(data: bytes) -> list[str]:
    data = data.lstrip(b"\r\n")
    end = data.find(b"\r\n\r\n")
    return data[:end if end >= 0 else len(data)].decode("utf-8", "surrogateescape").split("\r\n")


line = st.one_of(
    st.text(alphabet=" \t:abcAB-_.!%*+`'~,;=<>\"@xyz\u00e9\udcff", max_size=40),
    st.sampled_from(["Via: SIP/2.0/UDP h", "v : SIP/2.0/UDP h", " folded", "\tfolded", "Content-Length: 1",
                     "l: 2", "CSeq: 1 INVITE", "To: <sip:a@b>", "Call-ID: x", "i:y", "Bad Name: 1", ":", ""]),
)


@SETTINGS
@given(st.lists(line, max_size=12))
def test_generated_lines_give_what_the_specification_gives(lines):
    lines = ["INVITE sip:a@b SIP/2.0", *lines]
    assert outcome(_sip.header_fields, lines) == outcome(parser._header_fields, lines)


@SETTINGS
@given(st.one_of(requests().map(lambda s: s[0]), st.sampled_from(CORPUS + [INVITE, OPTIONS, RESPONSE]),
                 st.builds(lambda data, seed: mutate(data, random.Random(seed)),
                           st.sampled_from(CORPUS + [INVITE, OPTIONS, RESPONSE]), st.integers(0, 2**32))))
def test_messages_and_mutants_give_what_the_specification_gives(data):
    lines = lines_of(data)
    assert outcome(_sip.header_fields, lines) == outcome(parser._header_fields, lines)


def test_parse_message_uses_the_compiled_loop_unless_pure_python():
    expected = parser._header_fields if speedups.sip is None else speedups.sip.header_fields
    assert parser.header_fields is expected
    assert (speedups.sip is None) == speedups.PURE_PYTHON
