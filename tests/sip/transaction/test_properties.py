"""Properties of the whole layer under random interleavings (hypothesis).

Whatever the order of requests, retransmissions, ACKs, CANCELs, responses,
transport errors and timer ticks: nothing raises, every transaction emits
exactly one TransactionTerminated, and once the input stops (and the TU has
answered what it was asked) every transaction is gone within 64·T1 + 32 s —
except INVITE client transactions left ringing, which Timer C ends.
"""

from __future__ import annotations

from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster.sip.transaction import (
    Action, CancelReceived, RequestReceived, TimerConfig, TransactionLayer,
    TransactionTerminated,
)
from cluster.sip.transaction.actions import (
    AckReceived, ResponseReceived, Send, StrayResponse, TransactionTimeout, TransportError,
)

from .messages import SERVER, SERVER_TCP, TCP, UDP, request, response

CONFIG = TimerConfig(c=180.0)
STATUSES = (100, 180, 200, 486)
ACTION_TYPES = (
    Send, RequestReceived, ResponseReceived, AckReceived, CancelReceived, TransactionTimeout,
    TransportError, TransactionTerminated, StrayResponse,
)


class Scenario:
    """One transaction's worth of prebuilt messages."""

    def __init__(self, index: int, method: str, client: bool, reliable: bool) -> None:
        self.client = client
        self.method = method
        transport = "TCP" if reliable else "UDP"
        self.peer = (SERVER_TCP if reliable else SERVER) if client else (TCP if reliable else UDP)
        branch = f"z9hG4bKp{index}"
        self.request = request(method, branch, transport=transport, call_id=f"c{index}@x")
        self.responses = {status: response(self.request, status) for status in STATUSES}
        self.ack_non_2xx = request(
            "ACK", branch, transport=transport, call_id=f"c{index}@x", to_tag="tt1",
        )
        self.ack_2xx = request(
            "ACK", f"{branch}ack", transport=transport, call_id=f"c{index}@x", to_tag="tt1",
        )
        self.cancel = request("CANCEL", branch, transport=transport, call_id=f"c{index}@x")
        self.cancel_ok = response(self.cancel, 200)


SCENARIOS = [
    Scenario(i, method, client, reliable)
    for i, (method, client, reliable) in enumerate(
        (m, c, r) for m in ("INVITE", "OPTIONS") for c in (True, False) for r in (False, True)
    )
]

index = st.integers(0, len(SCENARIOS) - 1)
operation = st.one_of(
    st.tuples(st.just("start"), index),
    st.tuples(st.just("retransmit"), index),
    st.tuples(st.just("ack"), index, st.booleans()),
    st.tuples(st.just("cancel"), index),
    st.tuples(st.just("respond"), index, st.sampled_from(STATUSES)),
    st.tuples(st.just("error"), index),
    st.tuples(st.just("tick"), st.floats(0.0, 40.0, allow_nan=False)),
)


class Harness:
    def __init__(self) -> None:
        self.layer = TransactionLayer(CONFIG)
        self.now = 0.0
        self.created: list = []  # a key recurs when a TCP transaction ended at once
        self.terminated: list = []
        self.requests: dict = {}  # server key -> request the TU must answer
        self.client_keys: dict = {}  # scenario index -> key

    def absorb(self, actions: list[Action]) -> None:
        for action in actions:
            assert isinstance(action, ACTION_TYPES)
            if isinstance(action, RequestReceived):
                self.created.append(action.key)
                self.requests[action.key] = action.request
            elif isinstance(action, CancelReceived):
                self.created.append(action.cancel_key)
                self.requests[action.cancel_key] = action.request
            elif isinstance(action, TransactionTerminated):
                self.terminated.append(action.key)
                assert self.layer.state(action.key) is None

    def apply(self, op: tuple) -> None:
        layer, now = self.layer, self.now
        if op[0] == "tick":
            self.now = now = now + op[1]
            self.absorb(layer.handle_timer(now))
            deadline = layer.next_deadline()
            assert deadline is None or deadline > now
            return
        sc = SCENARIOS[op[1]]
        kind = op[0]
        if sc.client:
            if kind == "start" and op[1] not in self.client_keys:
                key, actions = layer.send_request(sc.request, sc.peer, now)
                self.client_keys[op[1]] = key
                self.created.append(key)
                self.absorb(actions)
            elif kind == "respond":
                self.absorb(layer.receive(sc.responses[op[2]], sc.peer, now))
            elif kind == "error" and op[1] in self.client_keys:
                self.absorb(layer.transport_error(self.client_keys[op[1]], now))
            return
        if kind in ("start", "retransmit"):
            self.absorb(layer.receive(sc.request, sc.peer, now))
        elif kind == "ack":
            self.absorb(layer.receive(sc.ack_non_2xx if op[2] else sc.ack_2xx, sc.peer, now))
        elif kind == "cancel":
            self.absorb(layer.receive(sc.cancel, sc.peer, now))
            self.absorb(layer.send_response(sc.cancel_ok, now))
        elif kind == "respond":
            self.absorb(layer.send_response(sc.responses[op[2]], now))
        elif kind == "error":
            for key in list(self.requests):
                self.absorb(layer.transport_error(key, now))

    def answer_everything(self) -> None:
        """The TU's part: every request it was given gets a final response."""
        for key, req in self.requests.items():
            if self.layer.state(key) in ("Trying", "Proceeding"):
                self.absorb(self.layer.send_response(response(req, 486), self.now))

    def run_until(self, until: float) -> None:
        layer = self.layer
        while (deadline := layer.next_deadline()) is not None and deadline <= until:
            self.absorb(layer.handle_timer(deadline))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(operation, max_size=50))
def test_random_interleavings_never_raise_and_always_terminate(ops):
    harness = Harness()
    for op in ops:
        harness.apply(op)
    harness.answer_everything()
    last_input = harness.now
    layer = harness.layer

    harness.run_until(last_input + 64 * CONFIG.t1 + 32.0)
    # Only INVITE client transactions with provisional responses may remain.
    for key, sc_index in ((k, i) for i, k in harness.client_keys.items()):
        if layer.state(key) is not None:
            assert SCENARIOS[sc_index].method == "INVITE"
            assert layer.state(key) == "Proceeding"
    assert all(key[0] == "c" for key in harness.created if layer.state(key) is not None)

    harness.run_until(last_input + CONFIG.c + 64 * CONFIG.t1)
    assert len(layer) == 0
    assert layer.next_deadline() is None
    assert Counter(harness.terminated) == Counter(harness.created)
    assert len(layer._queue) == 0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(STATUSES + (408, 603)), st.floats(0, 5)), max_size=12))
def test_client_invite_absorbs_any_response_sequence(sequence):
    layer = TransactionLayer(CONFIG)
    sc = SCENARIOS[0]
    key, _ = layer.send_request(sc.request, sc.peer, 0.0)
    now = 0.0
    for status, dt in sequence:
        now += dt
        layer.handle_timer(now)
        actions = layer.receive(response(sc.request, status), sc.peer, now)
        acks = [a for a in actions if isinstance(a, Send) and a.message.method == "ACK"]
        if status >= 300 and layer.state(key) == "Completed":
            assert len(acks) == 1  # every non-2xx final, first or repeated, is ACKed
        else:
            assert acks == []
    while (deadline := layer.next_deadline()) is not None:
        layer.handle_timer(deadline)
    assert len(layer) == 0
