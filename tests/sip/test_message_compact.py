"""A message at rest keeps its bytes only (Message.compact).

A transaction waiting out Timer J, L or M (RFC 3261 §17, RFC 6026) holds its
messages for up to 32 s without reading them. Compacted, they keep only their
bytes, start line and body; the parsed form is rebuilt on first use and must
be the one the bytes give.
"""

from __future__ import annotations

import pytest

from cluster.sip import parse_message
from cluster.sip.message import restores
from tests.sip.samples import INVITE, RESPONSE
from tests.sip.test_parser_fast_paths import _accepted_corpus


def _fields(message) -> list[tuple[str, str, str | None]]:
    return [(h.key, h.value, h.raw) for h in message.headers]


def test_a_compacted_message_keeps_its_bytes_and_parses_again_on_use():
    message = parse_message(INVITE)
    fields, call_id, cseq, via = _fields(message), message.call_id, message.cseq, message.via
    raw = message.to_bytes()
    message.compact()
    assert message.compacted
    before = restores()
    assert message.to_bytes() == raw  # the bytes answer without a parse
    assert message.uri is not None and message.method == "INVITE"
    assert restores() == before
    assert message.call_id == call_id  # first use: parsed again
    assert restores() == before + 1
    assert not message.compacted
    assert _fields(message) == fields
    assert message.cseq == cseq and message.via == via


def test_a_modified_message_is_rendered_before_it_rests():
    message = parse_message(RESPONSE)
    message.add("X-Note", "kept", first=True)
    rendered = message.to_bytes()
    message.set("X-Other", "too")
    expected = message.copy().to_bytes()
    assert expected != rendered
    message.compact()
    assert message.to_bytes() == expected
    assert message.get("X-Other") == "too" and message.get("X-Note") == "kept"


def test_a_rested_message_can_be_copied_and_modified():
    message = parse_message(INVITE)
    message.compact()
    clone = message.copy()
    clone.set("Max-Forwards", "9")
    assert clone.get("Max-Forwards") == "9"
    assert message.get("Max-Forwards") != "9"
    message.compact()
    message.compact()  # twice: still the same bytes
    assert parse_message(message.to_bytes()).get("Max-Forwards") != "9"


def test_unknown_attributes_still_raise():
    message = parse_message(INVITE)
    message.compact()
    with pytest.raises(AttributeError):
        message.no_such_attribute  # noqa: B018
    assert message.compacted  # asking for something else does not wake it


@pytest.mark.parametrize("data", _accepted_corpus())
def test_every_accepted_conformance_message_survives_a_rest(data):
    message = parse_message(data)
    fields, raw = _fields(message), message.to_bytes()
    message.compact()
    assert message.to_bytes() == raw
    assert _fields(message) == fields
