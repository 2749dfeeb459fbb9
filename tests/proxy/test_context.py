"""The response context of the stateful proxy (RFC 3261 §16.7–§16.10), sans-IO.

The tests play the worker's part by hand: each ``Forward`` gets the request
the worker would send (``forward_copy`` with our Via), responses are made
from that request by the "callee", and time is a number we advance.
"""

from __future__ import annotations

import pytest

from cluster.proxy.context import (
    TIMER_C, Cancel, Exhausted, Forward, ResponseContext, Upstream, choose_best,
)
from cluster.proxy.routing import forward_copy, proxy_via
from cluster.sip import Request, Response, make_response, parse_message, parse_uri

ADVERTISE = "192.0.2.10:5060"
CALLER_VIA = "SIP/2.0/UDP 198.51.100.7:5062;branch=z9hG4bKcaller1;rport"


def invite(method: str = "INVITE") -> Request:
    data = (
        f"{method} sip:bob@example.com SIP/2.0\r\n"
        f"Via: {CALLER_VIA}\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:alice@example.com>;tag=a1\r\n"
        "To: <sip:bob@example.com>\r\n"
        "Call-ID: ctx-1@198.51.100.7\r\n"
        f"CSeq: 7 {method}\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    message = parse_message(data)
    assert isinstance(message, Request)
    return message


def targets(*users: str):
    return [parse_uri(f"sip:{u}@192.0.2.{20 + i}") for i, u in enumerate(users)]


class Worker:
    """What the TU does with a context's outputs, reduced to bookkeeping."""

    def __init__(self, ctx: ResponseContext) -> None:
        self.ctx = ctx
        self.upstream: list[Response] = []
        self.cancelled: list[int] = []
        self.exhausted: list[Response] = []

    def run(self, outputs) -> list:
        for output in outputs:
            if isinstance(output, Forward):
                branch = output.branch
                via = proxy_via(self.ctx.request, "UDP", ADVERTISE, f"salt{branch.index}")
                branch.request = forward_copy(self.ctx.request, branch.target, via=via,
                                              record_route=f"<sip:{ADVERTISE};lr>")
            elif isinstance(output, Upstream):
                self.upstream.append(output.response)
            elif isinstance(output, Cancel):
                self.cancelled.append(output.branch.index)
            elif isinstance(output, Exhausted):
                self.exhausted.append(output.best)
        return outputs

    def respond(self, index: int, status: int, now: float = 0.0, **kw):
        branch = self.ctx.branches[index]
        response = make_response(branch.request, status, to_tag=f"callee{index}", **kw)
        return self.run(self.ctx.on_response(branch, response, now))


def start(*users: str, method: str = "INVITE", parallel: bool = True, timeout=None,
          now: float = 0.0):
    ctx = ResponseContext(("s", "z9hG4bKcaller1", "198.51.100.7", 5062, method), invite(method))
    worker = Worker(ctx)
    worker.run(ctx.add_targets(targets(*users), parallel=parallel, timeout=timeout, now=now))
    return ctx, worker


def statuses(responses) -> list[int]:
    return [r.status for r in responses]


# -- best response (§16.7 step 6) -------------------------------------------------


def test_forward_copies_carry_our_via_over_the_callers():
    ctx, worker = start("bob", "bob2")
    for branch in ctx.branches:
        assert branch.request.via.host == "192.0.2.10"
        assert str(branch.request.vias[1]) == CALLER_VIA
    assert ctx.branches[0].request.via.branch != ctx.branches[1].request.via.branch


@pytest.mark.parametrize("answers,best", [
    ([486, 404, 480], 486),       # same class, informative codes: the first
    ([302, 486], 302),            # lowest class wins
    ([486, 603, 404], 603),       # any 6xx wins over a lower class
    ([408, 404], 404),            # a branch that did not answer loses to one that did
    ([404, 401], 401),            # a challenge lets the caller resubmit
    ([486, 420], 420),
    ([500, 503], 500),
    ([503, 408], 408),            # 4xx before 5xx
])
def test_best_response(answers, best):
    ctx, worker = start(*(f"u{i}" for i in range(len(answers))))
    for i, status in enumerate(answers[:-1]):
        worker.respond(i, status)
        assert not worker.exhausted
    worker.respond(len(answers) - 1, answers[-1])
    assert statuses(worker.exhausted) == [best]
    worker.run(ctx.finish())
    assert statuses(worker.upstream) == [best]
    assert ctx.finished


def test_choose_best_of_nothing_is_none():
    assert choose_best([]) is None


def test_a_503_goes_upstream_as_500():
    ctx, worker = start("a", "b")
    worker.respond(0, 503)
    worker.respond(1, 503)
    assert statuses(worker.exhausted) == [503]
    worker.run(ctx.finish())
    [final] = worker.upstream
    assert final.status == 500 and final.reason == "Server Internal Error"
    assert final.to_bytes().startswith(b"SIP/2.0 500 Server Internal Error\r\n")


def test_6xx_cancels_the_pending_branches_and_ends_serial_search():
    ctx, worker = start("a", "b", "c")
    worker.respond(0, 180)
    worker.respond(2, 183)
    worker.respond(1, 600)
    # §16.7 step 10: the ringing branches are cancelled at once.
    assert sorted(worker.cancelled) == [0, 2]
    assert not worker.exhausted
    worker.respond(0, 487)
    worker.respond(2, 487)
    assert statuses(worker.exhausted) == [600]


def test_final_responses_go_upstream_without_our_via():
    ctx, worker = start("a")
    worker.respond(0, 486)
    worker.run(ctx.finish())
    [final] = worker.upstream
    assert [str(v) for v in final.vias] == [CALLER_VIA]
    assert final.to.tag == "callee0"


def test_a_branch_that_failed_locally_answers_with_the_callers_via():
    """No route to the target: the 404 is made here from the server
    transaction's request, which carries no Via of ours to remove."""
    ctx, worker = start("a")
    worker.run(ctx.on_failure(ctx.branches[0], 404, now=0.0))
    assert statuses(worker.exhausted) == [404]
    worker.run(ctx.finish())
    [final] = worker.upstream
    assert final.status == 404
    assert [str(v) for v in final.vias] == [CALLER_VIA]


def test_a_response_without_the_callers_via_still_answers_the_caller():
    """A callee that answered with only our Via (it copied a CANCEL's) must
    not leave the caller without a final response."""
    ctx, worker = start("a")
    worker.respond(0, 180)
    branch = ctx.branches[0]
    broken = make_response(branch.request, 487, to_tag="x")
    broken.set_values("Via", [str(branch.request.via)])
    worker.run(ctx.on_response(branch, broken, 1.0))
    worker.run(ctx.finish())
    assert [str(v) for v in worker.upstream[-1].vias] == [CALLER_VIA]


# -- provisional responses ------------------------------------------------------------


def test_provisional_responses_are_forwarded_except_100():
    ctx, worker = start("a")
    worker.respond(0, 100)
    assert worker.upstream == []  # §16.7 step 5: 100 is hop by hop
    worker.respond(0, 180)
    worker.respond(0, 183)
    assert statuses(worker.upstream) == [180, 183]
    assert [str(v) for v in worker.upstream[0].vias] == [CALLER_VIA]
    assert ctx.branches[0].state == "proceeding"


# -- 2xx ----------------------------------------------------------------------------------


def test_2xx_goes_upstream_at_once_and_cancels_the_other_branches():
    ctx, worker = start("desk", "mobile", "tablet")
    worker.respond(1, 180)          # ringing: can be cancelled now
    worker.respond(2, 100)          # only a 100: proceeding too
    worker.respond(0, 200)
    assert statuses(worker.upstream) == [180, 200]
    assert sorted(worker.cancelled) == [1, 2]
    assert not worker.exhausted
    # Their 487s are absorbed: the caller already has its answer.
    worker.respond(1, 487)
    worker.respond(2, 487)
    assert statuses(worker.upstream) == [180, 200]
    assert not worker.exhausted
    assert ctx.finished


def test_a_branch_without_provisional_is_cancelled_when_it_first_answers():
    ctx, worker = start("a", "b")
    worker.respond(0, 200)
    # §9.1: no CANCEL before a provisional response...
    assert worker.cancelled == []
    assert ctx.branches[1].cancel_wanted
    # ...then one as soon as it rings; the 180 is not passed on after a 2xx.
    worker.respond(1, 180)
    assert worker.cancelled == [1]
    assert statuses(worker.upstream) == [200]


def test_2xx_retransmissions_and_forked_2xx_are_all_forwarded():
    ctx, worker = start("a", "b")
    worker.respond(0, 180)
    worker.respond(1, 180)
    worker.respond(0, 200)
    worker.respond(0, 200)  # retransmission (RFC 6026: the TU forwards it)
    worker.respond(1, 200)  # the other fork answered before our CANCEL arrived
    assert statuses(worker.upstream) == [180, 180, 200, 200, 200]
    assert [r.to.tag for r in worker.upstream[2:]] == ["callee0", "callee0", "callee1"]
    # A late non-2xx on a finished branch is dropped.
    worker.respond(0, 500)
    assert len(worker.upstream) == 5


def test_finish_after_2xx_sends_nothing_more():
    ctx, worker = start("a")
    worker.respond(0, 200)
    assert ctx.finish() == []


# -- the caller's CANCEL (§16.10) ------------------------------------------------------


def test_caller_cancel_cancels_every_pending_branch():
    ctx, worker = start("a", "b")
    worker.respond(0, 180)
    worker.run(ctx.cancel())
    assert worker.cancelled == [0]
    assert ctx.branches[1].cancel_wanted  # cancelled once it rings
    worker.respond(1, 183)
    assert worker.cancelled == [0, 1]
    assert statuses(worker.upstream) == [180]  # nothing more goes up once cancelled
    worker.respond(0, 487)
    worker.respond(1, 487)
    assert statuses(worker.exhausted) == [487]
    worker.run(ctx.finish())
    assert statuses(worker.upstream) == [180, 487]


def test_caller_cancel_stops_serial_forking():
    ctx, worker = start("a", "b", parallel=False)
    worker.respond(0, 180)
    worker.run(ctx.cancel())
    worker.respond(0, 487)
    assert len(ctx.branches) == 1  # b is never tried
    assert statuses(worker.exhausted) == [487]


def test_cancel_of_a_non_invite_sends_nothing():
    ctx, worker = start("a", method="OPTIONS")
    worker.respond(0, 180)
    assert worker.run(ctx.cancel()) == []


# -- serial forking ------------------------------------------------------------------


def test_serial_forking_tries_targets_one_after_another():
    ctx, worker = start("first", "second", "third", parallel=False)
    assert [b.target.user for b in ctx.branches] == ["first"]
    worker.respond(0, 486)
    assert [b.target.user for b in ctx.branches] == ["first", "second"]
    assert not worker.exhausted
    worker.respond(1, 404)
    worker.respond(2, 480)
    assert [b.target.user for b in ctx.branches] == ["first", "second", "third"]
    assert statuses(worker.exhausted) == [486]


def test_serial_forking_stops_at_a_2xx():
    ctx, worker = start("first", "second", parallel=False)
    worker.respond(0, 200)
    assert len(ctx.branches) == 1 and ctx.serial == []
    assert statuses(worker.upstream) == [200]


def test_failure_hook_targets_start_new_branches():
    """The worker answers ``Exhausted`` with more targets (forward on busy)."""
    ctx, worker = start("bob")
    worker.respond(0, 486)
    assert statuses(worker.exhausted) == [486]
    worker.run(ctx.add_targets(targets("voicemail"), now=1.0))
    assert len(ctx.branches) == 2
    worker.respond(1, 200, now=2.0)
    assert statuses(worker.upstream) == [200]


# -- Timer C and per-branch timeouts (§16.8) ---------------------------------------


def test_timer_c_is_one_value_for_the_proxy_and_the_invite_client_transaction():
    from cluster.sip.transaction.timers import TimerConfig

    ctx, _ = start("a")
    assert ctx.timer_c == TimerConfig().c == TIMER_C > 180  # §16.6 step 11


def test_timer_c_is_armed_and_reset_by_provisionals():
    ctx, worker = start("a", now=10.0)
    assert ctx.next_deadline() == 10.0 + TIMER_C
    assert TIMER_C > 180  # §16.6 step 11: more than three minutes
    worker.respond(0, 180, now=50.0)
    assert ctx.next_deadline() == 50.0 + TIMER_C


def test_timer_c_on_a_ringing_branch_sends_cancel():
    ctx, worker = start("a", now=0.0)
    worker.respond(0, 180, now=1.0)
    deadline = ctx.next_deadline()
    assert worker.run(ctx.on_deadline(deadline - 0.001)) == []
    worker.run(ctx.on_deadline(deadline))
    assert worker.cancelled == [0]
    assert ctx.next_deadline() is None
    worker.respond(0, 487, now=deadline + 0.1)
    assert statuses(worker.exhausted) == [487]


def test_timer_c_on_a_silent_branch_counts_as_408_and_cancels_if_it_rings_later():
    ctx, worker = start("a", now=0.0)
    worker.run(ctx.on_deadline(TIMER_C))
    assert worker.cancelled == []  # §9.1: nothing to CANCEL yet
    assert statuses(worker.exhausted) == [408]
    worker.run(ctx.finish())
    assert statuses(worker.upstream) == [408]
    assert [str(v) for v in worker.upstream[0].vias] == [CALLER_VIA]
    worker.respond(0, 180, now=TIMER_C + 1)
    assert worker.cancelled == [0]
    assert statuses(worker.upstream) == [408]


def test_per_branch_timeout_cancels_a_ringing_branch_without_resetting():
    ctx, worker = start("a", "b", timeout=2.0, now=0.0)
    assert ctx.next_deadline() == 2.0
    worker.respond(0, 180, now=1.5)
    worker.respond(1, 180, now=1.5)
    # A provisional does not extend a no-answer timeout (only Timer C).
    assert ctx.next_deadline() == 2.0
    worker.run(ctx.on_deadline(2.0))
    assert sorted(worker.cancelled) == [0, 1]
    assert all(b.extra.get("no_answer") for b in ctx.branches)
    worker.respond(0, 487, now=2.1)
    worker.respond(1, 487, now=2.1)
    assert statuses(worker.exhausted) == [487]


def test_non_invite_has_no_timer_c_but_honours_a_branch_timeout():
    ctx, worker = start("a", method="OPTIONS")
    assert ctx.next_deadline() is None
    ctx2, worker2 = start("a", method="MESSAGE", timeout=5.0, now=1.0)
    assert ctx2.next_deadline() == 6.0
    worker2.run(ctx2.on_deadline(6.0))
    assert statuses(worker2.exhausted) == [408]


def test_transaction_timeout_is_a_408():
    ctx, worker = start("a", "b")
    worker.respond(0, 486)
    worker.run(ctx.on_timeout(ctx.branches[1], now=32.0))
    assert statuses(worker.exhausted) == [486]  # a real answer beats a timeout
    assert ctx.on_timeout(ctx.branches[1], now=33.0) == []  # already done


# -- challenges (§16.7 step 7) -------------------------------------------------------


def test_challenges_of_every_branch_are_collected_into_the_one_401_or_407():
    ctx, worker = start("a", "b", "c")
    worker.respond(0, 401, headers=[("WWW-Authenticate", 'Digest realm="a.example", nonce="n1"')])
    worker.respond(1, 407, headers=[("Proxy-Authenticate", 'Digest realm="b.example", nonce="n2"')])
    worker.respond(2, 401, headers=[("WWW-Authenticate", 'Digest realm="c.example", nonce="n3"'),
                                   ("WWW-Authenticate", 'Digest realm="a.example", nonce="n1"')])
    worker.run(ctx.finish())
    [final] = worker.upstream
    assert final.status == 401
    assert [c.get("realm") for c in final.www_authenticates] == ["a.example", "c.example"]
    assert [c.get("realm") for c in final.proxy_authenticates] == ["b.example"]
    # Received responses are left as they were.
    assert len(ctx.branches[0].response.www_authenticates) == 1
