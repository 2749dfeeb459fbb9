"""The INVITE server transaction (RFC 3261 §17.2.1, Figure 7; RFC 6026 §7.1).

    Proceeding --300-699 from TU--> Completed --ACK--> Confirmed --I--> Terminated
        |                              +--H or transport error--> Terminated
        +--2xx from TU--> Accepted --L--> Terminated

RFC 6026 replaces "2xx from TU: Terminated" with the Accepted state: for
64·T1 (Timer L) retransmitted INVITEs are absorbed instead of reaching the
TU as new requests, 2xx retransmissions from the TU (§13.3.1.4, the TU's
job) are sent, and an ACK that matches goes to the TU.
"""

from __future__ import annotations

from ..message import Request, Response
from ..responses import make_response
from .actions import (
    AckReceived, Action, RequestReceived, Send, TransactionTimeout, TransportError,
)
from .machine import ACCEPTED, COMPLETED, CONFIRMED, PROCEEDING, Transaction
from .peer import Peer


class ServerInviteTransaction(Transaction):
    __slots__ = ("response",)

    response: Response | None

    def start(self, now: float, out: list[Action], trying: bool) -> None:
        """INVITE received: pass it to the TU; with ``trying``, answer 100
        at once (§17.2.1: unless the TU answers within 200 ms, which a TU
        behind a location lookup cannot promise)."""
        self.state = PROCEEDING
        if trying:
            response = self.response = make_response(self.request, 100)
            out.append(Send(response, self.peer, self.key))
        else:
            self.response = None
        out.append(RequestReceived(self.key, self.request, self.peer))

    def on_request(self, request: Request, source: Peer, now: float, out: list[Action]) -> None:
        state = self.state
        counters = self.env.counters
        if request.method == "ACK":
            if state is COMPLETED:
                # §17.2.1: the ACK ends response retransmission; Timer I
                # absorbs its own retransmissions.
                self.state = CONFIRMED
                self._stop_timers()
                self._linger(self.env.timers.i, now, "I", out)
            elif state is CONFIRMED:
                counters.retransmissions_absorbed += 1
            elif state is ACCEPTED:
                out.append(AckReceived(request, source, self.key))
            else:
                self._illegal()
            return
        counters.retransmissions_absorbed += 1
        if state is PROCEEDING or state is COMPLETED:
            # §17.2.1: a retransmitted INVITE gets the most recent provisional
            # (Proceeding) or the final response (Completed) again.
            response = self.response
            if response is not None:
                counters.retransmissions_sent += 1
                out.append(Send(response, self.peer, self.key, True))
        # Confirmed, Accepted: absorbed (RFC 6026 §7.1: never to the TU).

    def on_tu_response(self, response: Response, now: float, out: list[Action]) -> None:
        status = response.status
        state = self.state
        if state is PROCEEDING:
            self.response = response
            out.append(Send(response, self.peer, self.key))
            if status < 200:
                return
            timers = self.env.timers
            if status < 300:
                self.state = ACCEPTED
                self._arm_timeout(timers.l, now, "L")
            else:
                self.state = COMPLETED
                if timers.g is not None:
                    self._arm_retransmit(timers.g, now, "G")
                self._arm_timeout(timers.h, now, "H")
            self._rest(response)
        elif state is ACCEPTED and 200 <= status < 300:
            # RFC 6026 §7.1: the TU's 2xx retransmissions pass straight through.
            out.append(Send(response, self.peer, self.key, True))
        else:
            self._illegal()

    def on_timer(self, name: str, now: float, out: list[Action]) -> None:
        state = self.state
        if name == "G" and state is COMPLETED and self.response is not None:
            # §17.2.1: T1, 2·T1, ... capped at T2, until the ACK or Timer H.
            self.env.counters.retransmissions_sent += 1
            out.append(Send(self.response, self.peer, self.key, True))
            interval = self._interval * 2
            t2 = self.env.timers.t2
            self._arm_retransmit(interval if interval < t2 else t2, now, "G")
        elif name == "H" and state is COMPLETED:
            # §17.2.1: the ACK never came; tell the TU.
            self.env.counters.timeouts += 1
            out.append(TransactionTimeout(self.key, "H"))
            self._terminate(out)
        elif (name == "I" and state is CONFIRMED) or (name == "L" and state is ACCEPTED):
            self._terminate(out)
        else:
            self._illegal()

    def on_transport_error(self, now: float, out: list[Action]) -> None:
        state = self.state
        if state is PROCEEDING or state is ACCEPTED:
            # RFC 6026 Figure 7: inform the TU and stay, so a late final
            # response still finds the transaction and retransmitted INVITEs
            # are still absorbed.
            self.env.counters.transport_errors += 1
            out.append(TransportError(self.key))
        elif state is COMPLETED:
            # §17.2.4: nothing left to deliver to.
            self.env.counters.transport_errors += 1
            out.append(TransportError(self.key))
            self._terminate(out)
        else:
            self._illegal()
