"""The response context of a stateful proxy (RFC 3261 §16.7–§16.10), sans-IO.

One ``ResponseContext`` exists per request the proxy forwards statefully. It
owns the branches (one client transaction each), decides which responses go
upstream, when to CANCEL pending branches and which final response wins. The
worker feeds it events and carries out the outputs it returns; time is a
parameter, deadlines are absolute.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from cluster.sip import Request, Response, URI, make_response
from cluster.proxy.failover import Attempts
from cluster.sip.transaction.actions import TransactionKey
from cluster.sip.transaction.timers import TIMER_C


@dataclass(slots=True, eq=False)
class Branch:
    index: int
    target: URI
    timeout: float | None = None
    """Per-branch timeout chosen by the application (no answer), seconds."""
    request: Request | None = None
    key: TransactionKey | None = None
    state: str = "new"  # new -> trying -> proceeding -> done
    response: Response | None = None
    cancel_wanted: bool = False
    cancel_sent: bool = False
    deadline: float | None = None
    extra: dict[str, object] = field(default_factory=dict)
    attempts: Attempts | None = None
    """The next hop's destinations and how far the branch got through them
    (RFC 3263 §4.3, ``cluster.proxy.failover``); None until located."""
    failover: tuple[URI, ...] = ()
    """Where this branch's slot goes next when it fails (``Alternatives``)."""
    group: str | None = None
    """The destination set the target came from, if any."""
    label: str | None = None
    """Which member of ``group`` the target is."""

    @property
    def pending(self) -> bool:
        return self.state in ("trying", "proceeding")


# -- outputs --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Forward:
    """Send ``branch`` (the worker builds the request and client transaction)."""

    branch: Branch


@dataclass(frozen=True, slots=True)
class Upstream:
    """Send ``response`` (our Via already removed) on the server transaction."""

    response: Response


@dataclass(frozen=True, slots=True)
class Cancel:
    """CANCEL ``branch`` (§9.1, §16.10)."""

    branch: Branch


@dataclass(frozen=True, slots=True)
class Exhausted:
    """Every branch ended without a 2xx: the application's failure hook may
    add targets; otherwise the worker calls ``finish()``."""

    best: Response


Output = Forward | Upstream | Cancel | Exhausted


@dataclass(frozen=True, slots=True)
class Alternatives:
    """Targets tried in turn in one branch slot: the first is forwarded; a
    503, or a failure made here (timeout with no response, transport error,
    no route), moves to the next as a new branch — a new client transaction
    with a new Via branch (RFC 3263 §4.3). Any other final response ends the
    slot, as a 486 from a gateway means the callee is busy whichever gateway
    is asked. ``group`` names where the targets came from (a destination set)
and ``labels`` which member each target is."""

    targets: tuple[URI, ...]
    group: str | None = None
    labels: tuple[str, ...] = ()


def fails_over(status: int, local: bool) -> bool:
    """Whether a final response moves an ``Alternatives`` slot to its next target."""
    return local or status == 503


class ResponseContext:
    def __init__(self, server_key: TransactionKey, request: Request, *, timer_c: float | None = TIMER_C) -> None:
        self.server_key = server_key
        self.request = request
        self.is_invite = request.method == "INVITE"
        self.timer_c = timer_c
        self.branches: list[Branch] = []
        self.serial: list[tuple[URI | Alternatives, float | None]] = []
        self.final_sent = False
        self.cancelled = False
        self.best: Response | None = None
        self.done = False

    # -- starting branches -----------------------------------------------------

    def add_targets(self, targets: Iterable[URI | Alternatives], *, parallel: bool = True,
                    timeout: float | None = None, now: float) -> list[Output]:
        targets = [t for t in targets if not isinstance(t, Alternatives) or t.targets]
        if not targets:
            return []
        if parallel:
            return [out for t in targets for out in self._start(t, timeout, now)]
        self.serial.extend((t, timeout) for t in targets[1:])
        return self._start(targets[0], timeout, now)

    def _start(self, target: URI | Alternatives, timeout: float | None, now: float) -> list[Output]:
        if isinstance(target, Alternatives):
            first, *rest = target.targets
            labels = target.labels
            branch = Branch(len(self.branches), first, timeout, failover=tuple(rest), group=target.group,
                            label=labels[0] if labels else None)
            branch.extra["labels"] = labels[1:]
        else:
            branch = Branch(len(self.branches), target, timeout)
        branch.state = "trying"
        self._arm(branch, now)
        self.branches.append(branch)
        return [Forward(branch)]

    def _arm(self, branch: Branch, now: float) -> None:
        limit = self.timer_c if self.is_invite else None
        if branch.timeout is not None:
            limit = branch.timeout if limit is None else min(limit, branch.timeout)
        branch.deadline = None if limit is None else now + limit

    def next_deadline(self) -> float | None:
        deadlines = [b.deadline for b in self.branches if b.pending and b.deadline is not None]
        return min(deadlines) if deadlines else None

    # -- events -------------------------------------------------------------------

    def on_response(self, branch: Branch, response: Response, now: float) -> list[Output]:
        status = response.status
        if status < 200:
            return self._provisional(branch, response, now)
        return self._final(branch, response, now)

    def _provisional(self, branch: Branch, response: Response, now: float) -> list[Output]:
        out: list[Output] = []
        if branch.state == "trying":
            branch.state = "proceeding"
        if self.is_invite and branch.timeout is None:
            self._arm(branch, now)  # §16.7 step 2: a provisional resets Timer C
        if branch.cancel_wanted and not branch.cancel_sent:
            # §9.1: a CANCEL waits for a provisional response.
            branch.cancel_sent = True
            out.append(Cancel(branch))
        if status_forwardable(response) and not self.final_sent and not self.cancelled:
            out.append(Upstream(_upstream(response, self.request)))
        return out

    def _final(self, branch: Branch, response: Response, now: float, *,
               local: bool = False) -> list[Output]:
        """A final response on ``branch``; ``local`` means we made it from the
        server transaction's request (it carries no Via of ours)."""
        if branch.state == "done":
            # A 2xx retransmission or another fork's 2xx after the first:
            # forwarded all the same (§16.7 step 5, RFC 6026).
            if 200 <= response.status < 300 and self.is_invite and not local:
                return [Upstream(_upstream(response, self.request))]
            return []
        branch.state = "done"
        # Kept as it would go upstream (our Via removed, §16.7 step 3), so
        # choosing among received and locally made responses is uniform.
        upstream = response if local else _upstream(response, self.request)
        branch.response = upstream
        branch.deadline = None
        out: list[Output] = []
        if 200 <= response.status < 300:
            self.final_sent = True
            out.append(Upstream(upstream))
            out.extend(self._cancel_pending())  # §16.7 step 10
            self.serial.clear()
            return out
        if 600 <= response.status:
            # §16.7 step 10 / §16.8: a 6xx ends the search.
            out.extend(self._cancel_pending())
            self.serial.clear()
        elif branch.failover and fails_over(response.status, local) \
                and not self.cancelled and not self.final_sent:
            # The slot's next target; this branch's response still competes
            # for best if every target fails (§16.7 step 6).
            labels = branch.extra.get("labels")
            rest = Alternatives(branch.failover, branch.group,
                                labels if isinstance(labels, tuple) else ())
            return out + self._start(rest, branch.timeout, now)
        if self.serial and not self.cancelled and not self.final_sent:
            target, timeout = self.serial.pop(0)
            return out + self._start(target, timeout, now)
        if not any(b.pending for b in self.branches) and not self.final_sent:
            # Every branch has ended, so each holds a response; as in finish(),
            # a 408 would stand for none.
            best = choose_best([b.response for b in self.branches if b.response]) \
                or make_response(self.request, 408)
            self.best = best
            out.append(Exhausted(best))
        return out

    def on_timeout(self, branch: Branch, now: float) -> list[Output]:
        """The client transaction timed out or failed: §16.7 treats it as 408."""
        return self.on_failure(branch, 408, now)

    def on_failure(self, branch: Branch, status: int, now: float,
                   headers: tuple[tuple[str, str], ...] = ()) -> list[Output]:
        """The branch failed without a response from downstream (no route to
        the target, timeout, transport error): it counts as a response with
        ``status`` made here (§16.7 step 6, §16.8), with ``headers`` (a
        Warning saying why)."""
        if branch.state == "done":
            return []
        return self._final(branch, make_response(self.request, status, headers=headers), now, local=True)

    def on_deadline(self, now: float) -> list[Output]:
        """Per-branch timeout or Timer C fired (§16.8): CANCEL what rings,
        give up on what never answered."""
        out: list[Output] = []
        for branch in self.branches:
            if branch.pending and branch.deadline is not None and branch.deadline <= now:
                branch.deadline = None
                if self.is_invite and branch.state == "proceeding":
                    branch.extra["no_answer"] = True
                    out.extend(self._cancel(branch))
                else:
                    # §16.8: no provisional yet, so no CANCEL may be sent
                    # (§9.1); it counts as a 408 now, and a provisional that
                    # still arrives gets the CANCEL then.
                    branch.cancel_wanted = self.is_invite
                    out.extend(self.on_timeout(branch, now))
        return out

    def cancel(self) -> list[Output]:
        """The caller's CANCEL (§16.10): cancel every pending branch."""
        self.cancelled = True
        self.serial.clear()
        return self._cancel_pending()

    def _cancel_pending(self) -> list[Output]:
        out: list[Output] = []
        for branch in self.branches:
            if branch.pending:
                out.extend(self._cancel(branch))
        return out

    def _cancel(self, branch: Branch) -> list[Output]:
        if not self.is_invite or branch.cancel_sent:
            return []
        branch.cancel_wanted = True
        if branch.state == "proceeding":
            branch.cancel_sent = True
            return [Cancel(branch)]
        return []

    def finish(self) -> list[Output]:
        """Send the best final response upstream (§16.7 step 6 and 9)."""
        if self.final_sent:
            return []
        self.final_sent = True
        self.done = True
        best = self.best or choose_best([b.response for b in self.branches if b.response])
        if best is None:
            return [Upstream(make_response(self.request, 408))]
        response = best.copy()
        if response.status == 503:
            # §16.7 step 6: a 503 is not passed on (it would stop upstream
            # elements from trying elsewhere); 500 goes instead.
            response.status, response.reason = 500, "Server Internal Error"
            response._raw = None
        if response.status in (401, 407):
            _aggregate_challenges(response, self.branches)
        return [Upstream(response)]

    @property
    def finished(self) -> bool:
        return self.final_sent and not any(b.pending for b in self.branches)


def status_forwardable(response: Response) -> bool:
    return response.status > 100


def choose_best(responses: list[Response]) -> Response | None:
    """§16.7 step 6: any 6xx first, else the lowest class; within the 4xx
    class prefer 401/407/415/420/484 (the caller can resubmit), then an
    informative code over 408 (a branch that simply did not answer)."""
    if not responses:
        return None
    six = [r for r in responses if r.status >= 600]
    if six:
        return six[0]

    def rank(r: Response) -> tuple[int, int]:
        klass = r.status // 100
        preference = 2
        if r.status in (401, 407, 415, 420, 484):
            # They tell the caller how to resubmit (§16.7 step 6).
            preference = 0
        elif r.status in (408, 503):
            preference = 3
        elif r.status in (486, 404, 480, 487):
            preference = 1
        return klass, preference

    return min(responses, key=rank)


def _upstream(response: Response, request: Request) -> Response:
    """A copy of ``response`` without our own (topmost) Via (§16.7 step 3).

    A response to a forwarded request always answers our server
    transaction. If the next hop returned only our Via (it copied the Via of
    a CANCEL, or dropped the rest), the request's Via list stands in for the
    missing one, so the caller still gets its answer instead of waiting for
    its Timer B."""
    out = response.copy()
    out.pop_via()
    if not out.has("via"):
        out.set_values("Via", request.get_all("via"))
    return out


def _aggregate_challenges(response: Response, branches: list[Branch]) -> None:
    """§16.7 step 7: collect every branch's challenges into the one 401/407."""
    for name in ("WWW-Authenticate", "Proxy-Authenticate"):
        values: list[str] = []
        for branch in branches:
            if branch.response is not None and branch.response.status in (401, 407):
                values.extend(branch.response.get_all(name))
        if values:
            response.remove(name)
            for value in dict.fromkeys(values):
                response.add(name, value)
