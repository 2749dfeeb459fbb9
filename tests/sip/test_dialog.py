"""Dialogs (RFC 3261 §12): creation, ordering, termination, request
construction with loose and strict routing, replication state."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster.sip import ParseError, Request, Response, parse_message
from cluster.sip.dialog import Dialog

CALL_ID = "a84b4c76e66710@pc33.atlanta.example.com"
ALICE = '"Alice" <sip:alice@atlanta.example.com>;tag=1928301774'
BOB = "Bob <sip:bob@biloxi.example.com>"
VIA = "SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds"
# Alice -> p1 -> p2 -> Bob: each proxy pushes its Record-Route on top.
RR_REQUEST = ("<sip:p2.biloxi.example.com;lr>", "<sip:p1.atlanta.example.com;lr>")


def _text(start: str, *, call_id: str = CALL_ID, from_: str = ALICE, to: str = BOB,
          cseq: str = "314159 INVITE", contact: str | None = None,
          record_route: tuple[str, ...] = (), body: bytes = b"") -> bytes:
    lines = [start, f"Via: {VIA}", "Max-Forwards: 70", f"From: {from_}", f"To: {to}",
             f"Call-ID: {call_id}", f"CSeq: {cseq}"]
    lines += [f"Record-Route: {rr}" for rr in record_route]
    if contact is not None:
        lines.append(f"Contact: {contact}")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def request(method: str = "INVITE", uri: str = "sip:bob@biloxi.example.com", **kw) -> Request:
    message = parse_message(_text(f"{method} {uri} SIP/2.0", **kw))
    assert isinstance(message, Request)
    return message


def response(status: int, **kw) -> Response:
    message = parse_message(_text(f"SIP/2.0 {status} Whatever", **kw))
    assert isinstance(message, Response)
    return message


INVITE = dict(contact="<sip:alice@pc33.atlanta.example.com>", record_route=RR_REQUEST)
BOB_TAGGED = BOB + ";tag=a6c85cf"


def uac_dialog(status: int = 200, **kw) -> tuple[Request, Dialog]:
    invite = request(**INVITE)
    answer = response(status, to=BOB_TAGGED, contact="<sip:bob@192.0.2.4>",
                      record_route=RR_REQUEST, **kw)
    return invite, Dialog.from_uac_response(invite, answer)


def uas_dialog() -> Dialog:
    return Dialog.from_uas_request(request(**INVITE), "a6c85cf")


def in_dialog_request(method: str, seq: int, *, by_bob: bool = True, **kw) -> Request:
    """A request from the peer of the dialog built by uac_dialog/uas_dialog."""
    if by_bob:
        return request(method, "sip:alice@pc33.atlanta.example.com", from_=BOB_TAGGED,
                       to=ALICE, cseq=f"{seq} {method}", **kw)
    return request(method, "sip:bob@192.0.2.4", to=BOB_TAGGED, cseq=f"{seq} {method}", **kw)


# -- creation -------------------------------------------------------------------


def test_uac_early_dialog_from_180_then_confirmed_by_200():
    invite = request(**INVITE)
    ringing = response(180, to=BOB_TAGGED, contact="<sip:bob@192.0.2.4;transport=udp>",
                       record_route=RR_REQUEST)
    d = Dialog.from_uac_response(invite, ringing)
    assert (d.state, d.role) == ("early", "uac")
    assert d.id == (CALL_ID, "1928301774", "a6c85cf")
    assert str(d.local_uri) == "sip:alice@atlanta.example.com"
    assert str(d.remote_uri) == "sip:bob@biloxi.example.com"
    assert str(d.remote_target) == "sip:bob@192.0.2.4;transport=udp"
    assert (d.local_cseq, d.remote_cseq, d.secure) == (314159, None, False)
    # §12.1.2: Record-Route of the response, reversed.
    assert [str(r) for r in d.route_set] == [
        "<sip:p1.atlanta.example.com;lr>", "<sip:p2.biloxi.example.com;lr>"]

    # §13.2.2.4: the 2xx confirms and recomputes route set and target.
    ok = response(200, to=BOB_TAGGED, contact="<sip:bob@192.0.2.99>",
                  record_route=("<sip:p3.example.com;lr>",) + RR_REQUEST)
    assert d.on_response(ok) is True
    assert d.state == "confirmed"
    assert str(d.remote_target) == "sip:bob@192.0.2.99"
    assert [str(r.uri) for r in d.route_set] == [
        "sip:p1.atlanta.example.com;lr", "sip:p2.biloxi.example.com;lr", "sip:p3.example.com;lr"]


def test_uac_dialog_directly_from_2xx_is_confirmed():
    invite, d = uac_dialog(200)
    assert d.state == "confirmed" and d.role == "uac"
    assert d.local_cseq == invite.cseq.seq == 314159
    assert d.remote_cseq is None
    assert str(d.remote_target) == "sip:bob@192.0.2.4"


def test_uac_dialog_from_2xx_without_to_tag_has_null_remote_tag():
    # §12.1.2: an RFC 2543 UAS may answer without a To tag.
    d = Dialog.from_uac_response(request(**INVITE), response(200, contact="<sip:bob@192.0.2.4>"))
    assert d.remote_tag is None and d.id == (CALL_ID, "1928301774", None)
    assert d.create_request("BYE").get("To") == "<sip:bob@biloxi.example.com>"


@pytest.mark.parametrize("status, to", [(100, BOB_TAGGED), (180, BOB), (486, BOB_TAGGED)])
def test_responses_that_create_no_dialog_are_refused(status, to):
    with pytest.raises(ValueError):
        Dialog.from_uac_response(request(**INVITE), response(status, to=to))


def test_uac_dialog_needs_its_own_from_tag():
    invite = request(from_="<sip:alice@atlanta.example.com>", **INVITE)
    with pytest.raises(ValueError):
        Dialog.from_uac_response(invite, response(200, to=BOB_TAGGED))


def test_secure_flag_needs_tls_and_a_sips_request_uri():
    sips = request(uri="sips:bob@biloxi.example.com", **INVITE)
    ok = response(200, to=BOB_TAGGED, contact="<sips:bob@192.0.2.4>")
    assert Dialog.from_uac_response(sips, ok, tls=True).secure is True
    assert Dialog.from_uac_response(sips, ok, tls=False).secure is False
    assert Dialog.from_uac_response(request(**INVITE), ok, tls=True).secure is False
    assert Dialog.from_uas_request(sips, "x", tls=True).secure is True


def test_uas_dialog_from_request():
    d = uas_dialog()
    assert (d.state, d.role) == ("early", "uas")
    assert d.id == (CALL_ID, "a6c85cf", "1928301774")
    assert str(d.local_uri) == "sip:bob@biloxi.example.com"
    assert str(d.remote_uri) == "sip:alice@atlanta.example.com"
    assert str(d.remote_target) == "sip:alice@pc33.atlanta.example.com"
    assert (d.local_cseq, d.remote_cseq) == (None, 314159)
    # §12.1.1: Record-Route of the request, in order.
    assert [str(r) for r in d.route_set] == list(RR_REQUEST)


def test_uas_dialog_confirmed_by_its_2xx_and_ended_by_a_failure():
    d = uas_dialog()
    d.on_response_sent(response(180, to=BOB_TAGGED))
    assert d.state == "early"
    d.on_response_sent(response(200, to=BOB_TAGGED, cseq="1 PRACK"))
    assert d.state == "early"  # a 2xx to PRACK settles nothing
    d.on_response_sent(response(200, to=BOB_TAGGED))
    assert d.state == "confirmed"
    d.on_response_sent(response(500, to=BOB_TAGGED))
    assert d.state == "confirmed"  # a failed re-INVITE leaves the dialog alone

    other = uas_dialog()
    other.on_response_sent(response(487, to=BOB_TAGGED))
    assert other.state == "terminated"  # §12.3


def test_uas_dialog_refuses_requests_already_in_a_dialog_or_without_contact():
    with pytest.raises(ValueError):
        Dialog.from_uas_request(request(to=BOB_TAGGED, **INVITE), "x")
    with pytest.raises(ParseError):
        Dialog.from_uas_request(request(), "x")


def test_uas_dialog_from_request_without_from_tag():
    d = Dialog.from_uas_request(request(from_="<sip:alice@atlanta.example.com>", **INVITE), "t1")
    assert d.remote_tag is None
    bye = d.create_request("BYE")
    assert bye.get("To") == "<sip:alice@atlanta.example.com>"
    assert bye.get("From") == "<sip:bob@biloxi.example.com>;tag=t1"


# -- building requests ---------------------------------------------------------


def test_loose_routing_request():
    _, d = uac_dialog()
    bye = d.create_request("BYE", headers=[("User-Agent", "t/1")])
    # §12.2.1.1: the remote target stays in the Request-URI, the route set
    # becomes the Route in order.
    assert str(bye.uri) == "sip:bob@192.0.2.4"
    assert bye.get_all("Route") == ["<sip:p1.atlanta.example.com;lr>",
                                     "<sip:p2.biloxi.example.com;lr>"]
    data = bye.to_bytes()
    assert data.startswith(b"BYE sip:bob@192.0.2.4 SIP/2.0\r\n"
                           b"Route: <sip:p1.atlanta.example.com;lr>, <sip:p2.biloxi.example.com;lr>\r\n"
                           b"Max-Forwards: 70\r\n"
                           b"To: <sip:bob@biloxi.example.com>;tag=a6c85cf\r\n"
                           b"From: <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
                           b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
                           b"CSeq: 314160 BYE\r\n"
                           b"User-Agent: t/1\r\n")
    assert not bye.has("Via")  # the transaction layer adds it
    # With a Via, the request is a valid message.
    bye.push_via("SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKnew")
    again = parse_message(bye.to_bytes())
    assert again.cseq.seq == 314160 and again.to.tag == "a6c85cf"
    assert again.from_.tag == "1928301774" and again.max_forwards == 70


def test_strict_routing_request():
    # The first route lacks lr: §12.2.1.1 puts it in the Request-URI (its
    # parameters kept, minus those a Request-URI may not carry), the rest of
    # the route set and then the remote target in the Route.
    invite = request(**INVITE)
    ok = response(200, to=BOB_TAGGED, contact="<sip:bob@192.0.2.4?Subject=hi>",
                  record_route=("<sip:p2.biloxi.example.com;lr>",
                                "<sip:p1.atlanta.example.com;maddr=192.0.2.10;method=INVITE>"))
    d = Dialog.from_uac_response(invite, ok)
    info = d.create_request("INFO", body=b"x", headers=[("Content-Type", "text/plain")])
    assert str(info.uri) == "sip:p1.atlanta.example.com;maddr=192.0.2.10"
    assert info.get_all("Route") == ["<sip:p2.biloxi.example.com;lr>", "<sip:bob@192.0.2.4>"]
    assert info.body == b"x" and info.content_type == "text/plain"
    assert b"\r\nContent-Length: 1\r\n\r\nx" in info.to_bytes()


def test_strict_single_route_puts_only_the_target_in_route():
    d = Dialog.from_uac_response(
        request(**INVITE),
        response(200, to=BOB_TAGGED, contact="<sip:bob@192.0.2.4>",
                 record_route=("<sip:10.0.0.1:5070;transport=tcp>",)))
    req = d.create_request("OPTIONS")
    assert str(req.uri) == "sip:10.0.0.1:5070;transport=tcp"
    assert req.get_all("Route") == ["<sip:bob@192.0.2.4>"]


def test_no_route_set_means_no_route_header():
    d = Dialog.from_uac_response(request(**INVITE),
                                 response(200, to=BOB_TAGGED, contact="<sip:bob@192.0.2.4>"))
    bye = d.create_request("BYE")
    assert str(bye.uri) == "sip:bob@192.0.2.4" and not bye.has("Route")


def test_uas_route_set_is_used_in_order():
    d = uas_dialog()
    d.on_response_sent(response(200, to=BOB_TAGGED))
    bye = d.create_request("BYE")
    assert str(bye.uri) == "sip:alice@pc33.atlanta.example.com"
    assert bye.get_all("Route") == list(RR_REQUEST)
    assert bye.to.tag == "1928301774" and bye.from_.tag == "a6c85cf"


def test_local_cseq_increases_and_ack_cancel_reuse_it():
    _, d = uac_dialog()
    ack = d.create_ack(314159)
    assert str(ack.cseq) == "314159 ACK" and d.local_cseq == 314159
    assert str(ack.uri) == "sip:bob@192.0.2.4" and ack.has("Route")
    reinvite = d.create_request("INVITE")
    assert reinvite.cseq.seq == 314160 == d.local_cseq
    cancel = d.create_request("CANCEL")
    assert str(cancel.cseq) == "314160 CANCEL" and str(cancel.uri) == str(reinvite.uri)
    assert d.create_request("ACK").cseq.seq == 314160
    assert d.create_request("INFO").cseq.seq == 314161
    assert d.create_request("BYE").cseq.seq == 314162 == d.local_cseq


def test_uas_chooses_an_initial_local_cseq_deterministically():
    first = uas_dialog().create_request("BYE").cseq.seq
    assert 0 < first < 2**31  # §8.1.1.5
    assert uas_dialog().create_request("BYE").cseq.seq == first  # no randomness
    d = uas_dialog()
    with pytest.raises(ValueError):
        d.create_request("ACK")  # nothing sent yet to acknowledge
    d.create_request("INFO")
    assert d.create_request("INFO").cseq.seq == first + 1


def test_local_cseq_cannot_wrap():
    _, d = uac_dialog()
    d.local_cseq = 2**32 - 1
    with pytest.raises(ValueError):
        d.create_request("INFO")
    assert d.local_cseq == 2**32 - 1


# -- receiving requests ----------------------------------------------------------


def test_out_of_order_request_is_rejected_with_500():
    d = uas_dialog()
    assert d.on_request(in_dialog_request("INFO", 314158, by_bob=False)) == 500
    assert d.remote_cseq == 314159
    assert d.on_request(in_dialog_request("INFO", 314159, by_bob=False)) is None  # equal: not lower
    assert d.on_request(in_dialog_request("INFO", 314170, by_bob=False)) is None
    assert d.remote_cseq == 314170
    assert d.on_request(in_dialog_request("UPDATE", 314160, by_bob=False)) == 500
    # ACK and CANCEL carry an older INVITE's number and are never ordered.
    assert d.on_request(in_dialog_request("ACK", 314159, by_bob=False)) is None
    assert d.remote_cseq == 314170


def test_first_request_from_callee_sets_remote_cseq():
    _, d = uac_dialog()
    assert d.on_request(in_dialog_request("INFO", 7)) is None
    assert d.remote_cseq == 7
    assert d.on_request(in_dialog_request("INFO", 6)) == 500


@pytest.mark.parametrize("change", [
    dict(call_id="other@x"),
    dict(from_="Bob <sip:bob@biloxi.example.com>;tag=zzz"),
    dict(to=ALICE.replace("1928301774", "nope")),
])
def test_request_for_another_dialog_gets_481(change):
    _, d = uac_dialog()
    kw = dict(from_=BOB_TAGGED, to=ALICE, cseq="1 INFO") | change
    assert d.on_request(request("INFO", "sip:alice@pc33.atlanta.example.com", **kw)) == 481
    assert d.remote_cseq is None and d.state == "confirmed"


def test_target_refresh_requests_move_the_remote_target():
    _, d = uac_dialog()
    routes = d.route_set
    assert d.on_request(in_dialog_request("INFO", 1, contact="<sip:bob@198.51.100.1>")) is None
    assert str(d.remote_target) == "sip:bob@192.0.2.4"  # INFO refreshes nothing
    assert d.on_request(in_dialog_request("INVITE", 2, contact="<sip:bob@198.51.100.2>")) is None
    assert str(d.remote_target) == "sip:bob@198.51.100.2"
    assert d.on_request(in_dialog_request("UPDATE", 3)) is None  # no Contact: unchanged
    assert str(d.remote_target) == "sip:bob@198.51.100.2"
    assert d.route_set == routes
    assert str(d.create_request("BYE").uri) == "sip:bob@198.51.100.2"


def test_bye_terminates_the_dialog():
    _, d = uac_dialog()
    assert d.on_request(in_dialog_request("BYE", 5)) is None
    assert d.state == "terminated"
    assert d.on_request(in_dialog_request("INFO", 6)) == 481
    assert d.on_response(response(200, to=BOB_TAGGED, cseq="314160 INFO")) is False
    with pytest.raises(ValueError):
        d.create_request("INFO")
    with pytest.raises(ValueError):
        d.create_ack(314159)


def test_out_of_order_bye_does_not_terminate():
    _, d = uac_dialog()
    d.on_request(in_dialog_request("INFO", 5))
    assert d.on_request(in_dialog_request("BYE", 4)) == 500
    assert d.state == "confirmed"


# -- receiving responses -----------------------------------------------------------


def test_early_dialog_terminated_by_non_2xx_final():
    _, d = uac_dialog(180)
    assert d.on_response(response(183, to=BOB_TAGGED)) is True
    assert d.state == "early"
    assert d.on_response(response(486, to=BOB_TAGGED)) is True
    assert d.state == "terminated"


def test_early_dialog_survives_final_responses_to_other_requests():
    _, d = uac_dialog(180)
    d.create_request("PRACK")
    assert d.on_response(response(200, to=BOB_TAGGED, cseq="314160 PRACK")) is True
    assert d.state == "early"
    assert d.on_response(response(403, to=BOB_TAGGED, cseq="314161 UPDATE")) is True
    assert d.state == "early"


def test_response_of_another_fork_is_not_this_dialogs():
    _, d = uac_dialog(180)
    assert d.on_response(response(200, to=BOB + ";tag=other")) is False
    assert d.state == "early"
    assert d.on_response(response(200, to=BOB_TAGGED, call_id="x@y")) is False
    assert d.on_response(response(200, to=BOB_TAGGED, from_="<sip:a@b>;tag=q")) is False
    assert d.state == "early"


def test_2xx_to_reinvite_refreshes_target_but_not_route_set():
    _, d = uac_dialog()
    routes = d.route_set
    d.create_request("INVITE")
    ok = response(200, to=BOB_TAGGED, cseq="314160 INVITE", contact="<sip:bob@203.0.113.7>",
                  record_route=("<sip:elsewhere.example.com;lr>",))
    assert d.on_response(ok) is True
    assert str(d.remote_target) == "sip:bob@203.0.113.7" and d.route_set == routes
    # A 2xx to a non-refresh request leaves the target alone (§12.2.1.2).
    d.on_response(response(200, to=BOB_TAGGED, cseq="314161 INFO", contact="<sip:bob@x.example>"))
    assert str(d.remote_target) == "sip:bob@203.0.113.7"


@pytest.mark.parametrize("status, method", [(481, "INFO"), (408, "UPDATE"), (200, "BYE")])
def test_responses_that_end_a_confirmed_dialog(status, method):
    _, d = uac_dialog()
    d.on_response(response(status, to=BOB_TAGGED, cseq=f"314160 {method}"))
    assert d.state == "terminated"


def test_challenged_bye_keeps_the_dialog_for_the_retry():
    _, d = uac_dialog()
    d.on_response(response(407, to=BOB_TAGGED, cseq="314160 BYE"))
    assert d.state == "confirmed"


def test_timeout_and_terminate():
    _, d = uac_dialog()
    d.on_timeout()
    assert d.state == "terminated"
    _, d = uac_dialog(180)
    d.terminate()
    assert d.state == "terminated"


# -- replication ---------------------------------------------------------------------


def _round_trip(d: Dialog) -> Dialog:
    return Dialog.from_state(msgpack.unpackb(msgpack.packb(d.to_state())))


def test_state_round_trips_through_msgpack():
    _, uac = uac_dialog(180)
    uas = Dialog.from_uas_request(request(
        uri="sips:bob@biloxi.example.com", from_="<sip:alice@atlanta.example.com>",
        contact="<sips:alice@pc33.atlanta.example.com;transport=tls>",
        record_route=('"edge" <sip:edge.example.com;lr;ftag=1>;x=y',)), "t9", tls=True)
    uas.create_request("INFO")
    for d in (uac, uas):
        copy = _round_trip(d)
        assert copy == d and copy.to_state() == d.to_state()
        assert copy.create_request("BYE").to_bytes() == d.create_request("BYE").to_bytes()
    state = uas.to_state()
    assert state["remote_tag"] is None and state["secure"] is True
    assert state["route_set"] == ['"edge" <sip:edge.example.com;lr;ftag=1>;x=y']
    _check_plain(state)


def _check_plain(value):
    if isinstance(value, dict):
        for key, item in value.items():
            assert isinstance(key, str)
            _check_plain(item)
    elif isinstance(value, list):
        for item in value:
            _check_plain(item)
    else:
        assert value is None or isinstance(value, (str, int))  # bool is an int


@pytest.mark.parametrize("change", [
    {"v": 2}, {"state": "open"}, {"role": "proxy"}, {"local_cseq": "1"}, {"secure": 1},
    {"route_set": "<sip:a;lr>"}, {"route_set": [3]}, {"remote_target": "not a uri"},
    {"call_id": None}, {"remote_tag": 5},
])
def test_corrupt_state_is_refused(change):
    _, d = uac_dialog()
    with pytest.raises(ValueError):
        Dialog.from_state(d.to_state() | change)
    state = d.to_state()
    del state["role"]
    with pytest.raises(ValueError):
        Dialog.from_state(state)


# -- property: any plausible sequence of events keeps the invariants ---------------

_ORDER = {"early": 0, "confirmed": 1, "terminated": 2}
_METHODS = ["INVITE", "ACK", "BYE", "CANCEL", "INFO", "UPDATE", "PRACK", "NOTIFY", "OPTIONS"]
_STATUSES = [100, 180, 183, 200, 202, 302, 401, 407, 408, 481, 486, 500, 603]

_tags = st.sampled_from(["match", "other", "none"])
_contacts = st.sampled_from([None, "<sip:bob@198.51.100.9>", "<sips:bob@[2001:db8::1]:5061>",
                             "<tel:+15551234567>", "*"])
_record_routes = st.sampled_from([(), RR_REQUEST, ("<sip:10.0.0.1>",)])
_events = st.lists(st.one_of(
    st.tuples(st.just("request"), st.sampled_from(_METHODS), st.integers(-3, 3), _tags, _contacts),
    st.tuples(st.just("response"), st.sampled_from(_STATUSES), st.sampled_from(_METHODS),
              _tags, _contacts, _record_routes),
    st.tuples(st.just("sent"), st.sampled_from(_STATUSES), st.sampled_from(_METHODS)),
    st.tuples(st.just("create"), st.sampled_from(_METHODS)),
    st.tuples(st.just("timeout")),
), max_size=12)


def _peer_request(d: Dialog, method: str, delta: int, tag: str, contact: str | None) -> Request:
    seq = max(0, (d.remote_cseq if d.remote_cseq is not None else 50) + delta)
    remote = {"match": d.remote_tag, "other": "zz", "none": None}[tag]
    from_ = f"<{d.remote_uri}>" + (f";tag={remote}" if remote else "")
    return request(method, "sip:me@192.0.2.1", call_id=d.call_id, from_=from_,
                   to=f"<{d.local_uri}>;tag={d.local_tag}", cseq=f"{seq} {method}", contact=contact)


def _peer_response(d: Dialog, status: int, method: str, tag: str, contact: str | None,
                   rr: tuple[str, ...]) -> Response:
    remote = {"match": d.remote_tag, "other": "zz", "none": None}[tag]
    to = f"<{d.remote_uri}>" + (f";tag={remote}" if remote else "")
    return response(status, call_id=d.call_id, from_=f"<{d.local_uri}>;tag={d.local_tag}", to=to,
                    cseq=f"{d.local_cseq or 1} {method}", contact=contact, record_route=rr)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["uac-early", "uac-confirmed", "uas"]), _events)
def test_random_event_sequences_keep_the_invariants(start, events):
    if start == "uas":
        d = uas_dialog()
    else:
        _, d = uac_dialog(180 if start == "uac-early" else 200)
    for event in events:
        before = (_ORDER[d.state], d.local_cseq, d.remote_cseq, d.route_set)
        kind = event[0]
        if kind == "request":
            status = d.on_request(_peer_request(d, *event[1:]))
            assert status in (None, 481, 500)
            if status is not None:
                assert d.remote_cseq == before[2] and _ORDER[d.state] == before[0]
        elif kind == "response":
            assert d.on_response(_peer_response(d, *event[1:])) in (True, False)
        elif kind == "sent":
            d.on_response_sent(response(event[1], to=f"<{d.local_uri}>;tag={d.local_tag}",
                                        cseq=f"1 {event[2]}"))
        elif kind == "create":
            try:
                made = d.create_request(event[1])
            except ValueError:
                assert before[0] == 2 or (event[1] in ("ACK", "CANCEL") and d.local_cseq is None)
            else:
                made.push_via("SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKprop")
                again = parse_message(made.to_bytes())
                assert (again.call_id, again.to.tag, again.from_.tag) == (
                    d.call_id, d.remote_tag, d.local_tag)
                assert again.cseq.seq == d.local_cseq and again.max_forwards == 70
        else:
            d.on_timeout()
        # States only move forward; sequence numbers never go back; the
        # route set only changes while early.
        assert _ORDER[d.state] >= before[0]
        if before[1] is not None:
            assert d.local_cseq >= before[1]
        if before[2] is not None:
            assert d.remote_cseq >= before[2]
        if before[0] >= 1:
            assert d.route_set == before[3]
    assert _round_trip(d).to_state() == d.to_state()
