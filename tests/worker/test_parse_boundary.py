"""One parse-error boundary: a field a later layer would read is checked where
the message enters the worker, and a request with a broken one is answered
400 there with the reason (§8.2.6, §20.43 Warning) — not proxied to fail
later, nor met halfway through the application or the registrar."""

from __future__ import annotations

import pytest

from cluster.sip import ParseError, parse_complete, parse_message

from .test_cancel_without_context import _feed, _request, _worker

BROKEN = {
    "a lower Via": "Via: SIP/2.0/UDP\r\n",
    "Proxy-Authorization": "Proxy-Authorization: Digest username=\r\n",
    "Authorization": "Authorization: \r\n",
    "Expires": "Expires: soon\r\n",
    "Path": "Path: no-brackets@example.com\r\n",
}


@pytest.mark.parametrize("field", sorted(BROKEN))
def test_the_worker_parse_checks_every_field_read_later(field):
    data = _request("INVITE", extra=BROKEN[field])
    parse_message(data)  # the message itself is well formed up to that field
    with pytest.raises(ParseError):
        parse_complete(data)


@pytest.mark.parametrize("field", sorted(BROKEN))
def test_a_request_with_a_broken_field_is_answered_400_where_it_enters(field):
    worker = _worker("worker-p")
    _feed(worker, _request("INVITE", extra=BROKEN[field]))
    sent = worker.links.outbox.messages()
    assert [m.status for m in sent] == [400], "answered at the boundary, not proxied"
    assert (sent[0].get("warning") or "").startswith("399 sipcluster-worker")
    assert worker.stats["parse_error"] == 1
    assert worker.stats["internal_error"] == 0
    assert not worker.tu.contexts


def test_a_response_with_a_broken_lower_via_is_dropped_at_the_boundary():
    worker = _worker("worker-p")
    response = (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-x\r\n"
                b"Via: SIP/2.0/UDP\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\n"
                b"Call-ID: r1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")
    _feed(worker, response)
    assert worker.links.outbox.frames == []
    assert worker.stats["parse_error"] == 1 and worker.stats["internal_error"] == 0
