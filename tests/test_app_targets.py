"""What the application may name as a target of ``Call.proxy`` and
``Call.redirect``: a URI, its text, a name-addr (its q kept) or a Target;
anything else is the application's mistake, refused with TypeError when the
decision is made rather than carried into the proxy core."""

from __future__ import annotations

import pytest

from cluster.app.api import Call, Target
from cluster.sip import AuthField, parse_message, parse_name_addr, parse_uri

INVITE = (b"INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.7;branch=z9hG4bKt1\r\n"
          b"From: <sip:alice@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\nCall-ID: t-1\r\n"
          b"CSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")


def _call() -> Call:
    return Call(parse_message(INVITE), None, None, "worker-1")


def test_uris_their_text_name_addrs_and_targets_are_targets():
    decision = _call().proxy([
        parse_uri("sip:bob@192.0.2.1"), "sip:bob@192.0.2.2",
        parse_name_addr("<sip:bob@192.0.2.3>;q=0.5"), Target(parse_uri("tel:+15551234567"), q=0.2),
    ])
    assert [(str(t.uri), t.q) for t in decision.targets] == [
        ("sip:bob@192.0.2.1", None), ("sip:bob@192.0.2.2", None),
        ("sip:bob@192.0.2.3", 0.5), ("tel:+15551234567", 0.2)]


def test_an_object_that_only_has_a_scheme_is_not_a_target():
    # An Authorization value has a scheme too; it was taken for a URI.
    credentials = AuthField("Digest", (("username", "bob"),))
    with pytest.raises(TypeError, match="cannot proxy to"):
        _call().proxy([credentials])
    with pytest.raises(TypeError, match="cannot proxy to"):
        _call().redirect([credentials])
