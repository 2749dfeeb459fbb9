"""Overload control's sans-IO core: classification from raw bytes, levels
from readings with ``now`` advanced by hand, verdicts by priority."""

from __future__ import annotations

import pytest

from cluster.defence.admission import ADMIT, DROP, REJECT, Admission, AdmissionPolicy, Priority, classify


def request(method: str, to: str = "To: <sip:bob@example.com>", extra: str = "") -> bytes:
    return (f"{method} sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\n"
            f"{to}\r\nFrom: <sip:alice@example.com>;tag=a\r\nCall-ID: c\r\nCSeq: 1 {method}\r\n{extra}"
            "Content-Length: 0\r\n\r\n").encode()


@pytest.mark.parametrize(("data", "expected"), [
    (b"SIP/2.0 200 OK\r\nVia: x\r\n\r\n", Priority.RESPONSE),
    (request("INVITE"), Priority.INVITE),
    (request("INVITE", "To: <sip:bob@example.com>;tag=b7"), Priority.IN_DIALOG),  # re-INVITE
    (request("BYE", "t: <sip:bob@example.com> ; TAG = b7"), Priority.IN_DIALOG),  # compact form, spaces
    (request("ACK"), Priority.IN_DIALOG),
    (request("CANCEL"), Priority.IN_DIALOG),
    (request("OPTIONS"), Priority.OPTIONS),
    (request("REGISTER"), Priority.REGISTER),
    (request("MESSAGE"), Priority.OTHER),
    (request("invite"), Priority.INVITE),
    (b"\x00\x01garbage", Priority.GARBAGE),
    (b"", Priority.GARBAGE),
    (b"HELLO world\r\n\r\n", Priority.GARBAGE),  # no SIP-Version in the request line
    (b"IN<VITE sip:x SIP/2.0\r\n\r\n", Priority.GARBAGE),  # not a token
    (b"A" * 70000, Priority.GARBAGE),
])
def test_classify_from_the_request_line_and_to_tag(data, expected):
    assert classify(data) == expected


def test_a_tag_in_the_body_or_another_header_is_not_a_to_tag():
    data = request("INVITE", extra="Subject: x;tag=1\r\n").replace(b"Content-Length: 0\r\n\r\n",
                                                                    b"Content-Length: 12\r\n\r\nTo: a;tag=b\r\n")
    assert classify(data) == Priority.INVITE


def test_levels_rise_at_once_and_fall_after_hold():
    admission = Admission(AdmissionPolicy(depth=(0.5, 0.75, 0.95), lag=(0.1, 0.25, 0.5), hold=0.5))
    assert admission.observe(10.0, depth=0.2) == 0
    assert admission.observe(10.0, lag=0.3) == 2
    assert admission.observe(10.1, depth=1.0) == 3
    # Calm readings within ``hold`` of the last loaded one keep the level.
    assert admission.observe(10.5, depth=0.0) == 3
    assert admission.observe(10.6, depth=0.6) == 1
    assert admission.observe(10.7, depth=0.0) == 1
    assert admission.observe(11.1, depth=0.0) == 0


def test_no_reading_at_all_still_ends_shedding_after_hold():
    admission = Admission(AdmissionPolicy(hold=0.5))
    admission.observe(0.0, depth=1.0)
    assert admission.verdict(Priority.OPTIONS, 0.4) == DROP
    assert admission.verdict(Priority.OPTIONS, 0.5) == ADMIT
    assert admission.level == 0


@pytest.mark.parametrize(("level_depth", "admitted", "shed"), [
    (0.0, set(Priority), set()),
    (0.5, {Priority.RESPONSE, Priority.IN_DIALOG, Priority.INVITE, Priority.OTHER, Priority.REGISTER},
     {Priority.OPTIONS, Priority.GARBAGE}),
    (0.8, {Priority.RESPONSE, Priority.IN_DIALOG, Priority.INVITE},
     {Priority.OTHER, Priority.REGISTER, Priority.OPTIONS, Priority.GARBAGE}),
    (1.0, {Priority.RESPONSE, Priority.IN_DIALOG},
     {Priority.INVITE, Priority.OTHER, Priority.REGISTER, Priority.OPTIONS, Priority.GARBAGE}),
])
def test_shed_by_priority(level_depth, admitted, shed):
    admission = Admission()
    admission.observe(0.0, depth=level_depth)
    assert {p for p in Priority if admission.verdict(p, 0.1) == ADMIT} == admitted
    assert {p for p in Priority if admission.verdict(p, 0.1) != ADMIT} == shed
    assert sum(admission.shed.values()) == 2 * len(shed)


def test_requests_up_to_reject_to_are_answered_the_rest_dropped():
    edge = Admission(reject_to=Priority.OTHER)
    edge.observe(0.0, depth=1.0)
    assert edge.verdict(Priority.INVITE, 0.0) == REJECT
    assert edge.verdict(Priority.OTHER, 0.0) == REJECT
    assert edge.verdict(Priority.REGISTER, 0.0) == DROP
    assert edge.verdict(Priority.GARBAGE, 0.0) == DROP
    worker = Admission(reject_to=Priority.OPTIONS)
    worker.observe(0.0, depth=1.0)
    assert worker.verdict(Priority.OPTIONS, 0.0) == REJECT
    assert worker.verdict(Priority.GARBAGE, 0.0) == DROP
    assert worker.shed["options"] == 1 and worker.shed["garbage"] == 1


@pytest.mark.parametrize("kwargs", [{"depth": (0.5, 0.4, 0.9)}, {"lag": (0.0, 0.1, 0.2)}, {"lag": (0.1, 0.2)},
                                    {"hold": -1.0}])
def test_policy_refuses_unusable_thresholds(kwargs):
    with pytest.raises(ValueError):
        AdmissionPolicy(**kwargs)
