"""Whole SIP messages for chosen calls and users, switched on through etcd
without a restart; trace and span ids on every log line inside a call."""

from __future__ import annotations

import json
import logging

import trio

from cluster.coordination import EtcdStore
from cluster.logs import CALL_ID, JsonFormatter, TraceContextFilter
from cluster.observability.sip_logging import SipLogSelection, debug_key, follow_selection, selection_value
from cluster.observability.tracing import trace_id_for
from cluster.sip import parse_message
from tests.sip.samples import INVITE, RESPONSE

# INVITE: Call-ID a84b4c76e66710@pc33.atlanta.example.com, From alice@atlanta.example.com,
# To bob@biloxi.example.com.


def selection(**document) -> SipLogSelection:
    chosen = SipLogSelection(clock=lambda: 1000.0)
    chosen.load(json.dumps(document).encode())
    return chosen


def test_nothing_selected_is_inactive():
    chosen = SipLogSelection()
    assert chosen.active is False
    chosen.load(None)
    assert chosen.active is False


def test_matches_call_id_user_at_host_and_bare_user():
    message = parse_message(INVITE)
    assert selection(call_ids=["a84b4c76e66710@pc33.atlanta.example.com"]).matches(message)
    assert selection(users=["sip:Bob@Biloxi.example.com"]).matches(message)
    assert selection(users=["alice"]).matches(message)
    assert not selection(users=["carol@chicago.example.com"], call_ids=["other"]).matches(message)
    assert selection(users=["bob@biloxi.example.com"]).matches(parse_message(RESPONSE))


def test_until_ends_logging_and_bad_values_turn_it_off(caplog):
    message = parse_message(INVITE)
    expired = selection(users=["alice"], until=999.0)
    assert expired.active and not expired.matches(message) and not expired.active
    chosen = selection(users=["alice"])
    with caplog.at_level(logging.WARNING):
        chosen.load(b"[not an object]")
    assert not chosen.active
    assert "ignoring the SIP log selection" in caplog.text


def test_record_logs_the_whole_message_with_its_call(caplog):
    chosen = selection(users=["alice"])
    message = parse_message(INVITE)
    with caplog.at_level(logging.INFO, logger="sipcluster.sip"):
        chosen.record("in", message, INVITE, "UDP", ("192.0.2.1", 5060))
    (record,) = [r for r in caplog.records if r.name == "sipcluster.sip"]
    assert record.direction == "in" and record.peer == "192.0.2.1:5060"
    assert record.sip == INVITE.decode() and record.call_id == message.call_id


def test_log_lines_inside_a_call_carry_trace_ids():
    record = logging.LogRecord("sipcluster.worker", logging.WARNING, __file__, 1, "x", (), None)
    outside = logging.LogRecord("sipcluster.worker", logging.WARNING, __file__, 1, "y", (), None)
    log_filter = TraceContextFilter()
    token = CALL_ID.set("call-42@example.com")
    try:
        log_filter.filter(record)
    finally:
        CALL_ID.reset(token)
    log_filter.filter(outside)
    line = json.loads(JsonFormatter("w1").format(record))
    assert line["call_id"] == "call-42@example.com"
    assert line["trace_id"] == f"{trace_id_for('call-42@example.com'):032x}"
    assert "trace_id" not in json.loads(JsonFormatter("w1").format(outside))


def test_log_lines_inside_a_span_carry_its_span_id():
    from opentelemetry.sdk.trace import TracerProvider
    tracer = TracerProvider().get_tracer("test")
    record = logging.LogRecord("sipcluster.worker", logging.INFO, __file__, 1, "x", (), None)
    with tracer.start_as_current_span("s") as span:
        TraceContextFilter().filter(record)
    assert record.span_id == f"{span.get_span_context().span_id:016x}"
    assert record.trace_id == f"{span.get_span_context().trace_id:032x}"


def test_workers_follow_the_etcd_key_without_restart(etcd_server):
    prefix = "/sipcluster-siplog-test"
    client = etcd_server.client()
    chosen = SipLogSelection()

    async def main():
        store = EtcdStore(etcd_server.endpoint)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(follow_selection, store, prefix, chosen)
                assert not chosen.active
                client.put(debug_key(prefix), selection_value(["cid-1"], ["alice@example.com"], None))
                with trio.fail_after(10):
                    while not chosen.active:
                        await trio.sleep(0.02)
                assert chosen.call_ids == {"cid-1"} and chosen.users == {"alice@example.com"}
                client.put(debug_key(prefix) + "-other", b"{}")  # a neighbour key is not ours
                client.delete(debug_key(prefix))
                with trio.fail_after(10):
                    while chosen.active:
                        await trio.sleep(0.02)
                nursery.cancel_scope.cancel()
        finally:
            store.close()

    trio.run(main)
    client.close()
