"""What the four transaction machines share: states, timers, counters.

Each machine (client_invite, client_non_invite, server_invite,
server_non_invite) follows one figure of RFC 3261 §17 as corrected by
RFC 6026. Rules common to all of them:

* Inputs arrive as method calls that append actions to ``out``; nothing is
  returned and nothing raises. An input the current state has no transition
  for is absorbed and counted in ``TransactionCounters.illegal_inputs``
  (a network peer must not be able to crash the layer).
* A transaction holds at most two timers: the retransmission timer
  (A, E, G) and the state timer (B, C, D, F, H, I, J, K, L, M).
* Entering Terminated stops both timers and emits ``TransactionTerminated``;
  the layer then forgets the transaction ("MUST be destroyed the instant it
  enters the Terminated state", §17.1.1.2).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..message import Message, Request, Response
from .actions import Action, TransactionKey, TransactionTerminated
from .peer import Peer
from .timers import TimerEntry, TimerQueue, Timers

# State names as in the RFC figures; identity comparison is safe because
# every assignment uses these constants.
CALLING = "Calling"
TRYING = "Trying"
PROCEEDING = "Proceeding"
COMPLETED = "Completed"
CONFIRMED = "Confirmed"
ACCEPTED = "Accepted"
TERMINATED = "Terminated"


@dataclass(slots=True)
class TransactionCounters:
    """Running totals for metrics (DESIGN §9: transactions by outcome,
    drops and retransmissions)."""

    client_created: int = 0
    server_created: int = 0
    retransmissions_sent: int = 0
    retransmissions_absorbed: int = 0
    illegal_inputs: int = 0
    timeouts: int = 0
    transport_errors: int = 0
    stray_responses: int = 0
    stray_acks: int = 0
    unmatched_tu_responses: int = 0
    merged_requests: int = 0
    malformed: int = 0


class Environment:
    """What a transaction needs from its layer: the timer values for its
    transport class, the shared timer queue and the shared counters. One
    instance per transport class, shared by every transaction of that class."""

    __slots__ = ("timers", "queue", "counters", "resting")

    def __init__(self, timers: Timers, queue: TimerQueue[Transaction],
                 counters: TransactionCounters, resting: list[Message] | None = None) -> None:
        self.timers = timers
        self.queue = queue
        self.counters = counters
        self.resting: list[Message] = [] if resting is None else resting
        """Messages of transactions that now only wait, to be compacted once
        the current input is fully handled (TransactionLayer.rest)."""


class Transaction:
    """State every machine keeps. ``peer`` is where requests go (client) or
    where the request came from and responses go (server)."""

    __slots__ = ("key", "request", "peer", "state", "env", "_retransmit", "_timeout", "_interval")

    def __init__(self, key: TransactionKey, request: Request, peer: Peer, env: Environment) -> None:
        self.key = key
        self.request = request
        self.peer = peer
        self.env = env
        self.state = ""
        self._retransmit: TimerEntry | None = None
        self._timeout: TimerEntry | None = None
        self._interval = 0.0

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.state} {self.key!r}>"

    # -- timers ---------------------------------------------------------------

    def _arm_retransmit(self, delay: float, now: float, name: str) -> None:
        queue = self.env.queue
        if self._retransmit is not None:
            queue.abandon()
        self._interval = delay
        self._retransmit = queue.push(now + delay, self, name)

    def _arm_timeout(self, delay: float, now: float, name: str) -> None:
        queue = self.env.queue
        if self._timeout is not None:
            queue.abandon()
        self._timeout = queue.push(now + delay, self, name)

    def _stop_timers(self) -> None:
        if self._retransmit is not None:
            self._retransmit = None
            self.env.queue.abandon()
        if self._timeout is not None:
            self._timeout = None
            self.env.queue.abandon()

    def _rest(self, other: Request | Response | None = None) -> None:
        """The transaction now only waits (Timers D, I, J, K, L, M): its
        messages are to be kept as bytes until something reads them again
        (see Message.compact; retransmissions are matched by key and
        answered from bytes). Not at once: the TU and the observers still
        read them while this input's actions are performed."""
        resting = self.env.resting
        resting.append(self.request)
        if other is not None:
            resting.append(other)

    def _linger(self, delay: float, now: float, name: str, out: list[Action]) -> None:
        """Wait ``delay`` for stray retransmissions, or end now when it is 0
        (reliable transports: Timers D, I, J, K are zero)."""
        if delay:
            self._arm_timeout(delay, now, name)
        else:
            self._terminate(out)

    def _terminate(self, out: list[Action]) -> None:
        self._stop_timers()
        self.state = TERMINATED
        out.append(TransactionTerminated(self.key))

    def _illegal(self) -> None:
        self.env.counters.illegal_inputs += 1

    # -- inputs (overridden per machine) ---------------------------------------

    def on_timer(self, name: str, now: float, out: list[Action]) -> None:
        self._illegal()

    def on_transport_error(self, now: float, out: list[Action]) -> None:
        self._illegal()

    def on_response(self, response: Response, now: float, out: list[Action]) -> None:
        self._illegal()

    def on_request(self, request: Request, source: Peer, now: float, out: list[Action]) -> None:
        self._illegal()

    def on_tu_response(self, response: Response, now: float, out: list[Action]) -> None:
        self._illegal()
