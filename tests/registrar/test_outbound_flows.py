"""RFC 5626 at the registrar and the location service: the flow's Path entry
is stored first, the 200 says Require: outbound with Flow-Timer, and a
lookup offers one flow per instance with the others as alternates."""

from __future__ import annotations

from collections import Counter

from cluster.proxy.flows import Flow, FlowTokens, flow_path
from cluster.registrar import RegistrarPolicy, Source, process_register
from nodes.worker.services import one_flow_per_instance

from .samples import register_request

NOW = 1_000_000.0
TOKENS = FlowTokens(b"f" * 32)
POLICY = RegistrarPolicy(flow_timer=25)
FLOW = Flow("edge-1", "TCP", ("198.51.100.7", 40123), ("192.0.2.1", 5060), 5, strict=True)
OB = '<sip:alice@198.51.100.7;transport=tcp;ob>;+sip.instance="<urn:uuid:00000000-0000-0000-0000-000000000001>";reg-id={}'


def outbound_register(reg_id: int, *, flow: Flow = FLOW, cseq: int = 1):
    request = register_request([OB.format(reg_id)], cseq=cseq,
                               headers=(("Supported", "outbound, path"),))
    path = flow_path("192.0.2.1:5060", TOKENS.make(flow), flow.transport)
    return process_register(request, now=NOW + cseq, current=(), policy=POLICY,
                            source=Source("TCP", *flow.peer), edge=flow.edge, conn=flow.conn,
                            flow_path=path)


def test_an_outbound_registration_stores_its_flow_and_answers_flow_timer():
    result = outbound_register(1)
    assert result.status == 200
    headers = dict(result.headers)
    assert headers["Require"] == "outbound" and headers["Flow-Timer"] == "25"
    (binding,) = result.puts
    assert "sfl=" in binding.path[0] and ";ob" in binding.path[0]
    assert not any(name == "Path" for name, _ in result.headers), "our own Path is not echoed"


def test_no_flow_timer_without_outbound():
    request = register_request(["<sip:alice@198.51.100.7>"])
    result = process_register(request, now=NOW, current=(), policy=POLICY)
    assert "Flow-Timer" not in dict(result.headers) and "Require" not in dict(result.headers)


def test_one_flow_per_instance_the_latest_first_the_others_as_alternates():
    older = Flow("edge-1", "TCP", ("198.51.100.7", 40123), ("192.0.2.1", 5060), 5, strict=True)
    newer = Flow("edge-2", "TCP", ("198.51.100.7", 40999), ("192.0.2.2", 5060), 8, strict=True)
    (first,) = outbound_register(1, flow=older, cseq=1).puts
    (second,) = outbound_register(2, flow=newer, cseq=2).puts
    plain = process_register(register_request(["<sip:alice@198.51.100.50>"], call_id="other"),
                             now=NOW, current=(), policy=POLICY).puts[0]
    targets = one_flow_per_instance([first, plain, second], TOKENS)
    assert len(targets) == 2, "the instance once, the plain contact once"
    flowing = next(t for t in targets if t.flow is not None)
    assert flowing.flow == newer, "the flow registered last goes first"
    assert [t.flow for t in flowing.alternates] == [older]
    assert flowing.path == (), "our own Path entry is consumed, not sent as a Route"


def test_a_binding_whose_token_no_longer_verifies_is_skipped_and_counted():
    (binding,) = outbound_register(1).puts
    counter: Counter[str] = Counter()
    assert one_flow_per_instance([binding], FlowTokens(b"x" * 32), counter) == []
    assert counter["flow_token_unreadable"] == 1
