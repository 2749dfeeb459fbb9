"""The non-INVITE client transaction (RFC 3261 §17.1.2, Figure 6).

    Trying --1xx--> Proceeding --200-699--> Completed --K--> Terminated
      |  \\_______________200-699_______________^
      +--F or transport error (Trying, Proceeding)--> Terminated

Timer E retransmits at T1, 2·T1, ... capped at T2 in Trying and every T2 in
Proceeding; Timer F (64·T1) bounds the whole exchange. The TU turns a
timeout into a 408 of its own (§8.1.3.1).
"""

from __future__ import annotations

from ..message import Response
from .actions import Action, ResponseReceived, Send, TransactionTimeout, TransportError
from .machine import COMPLETED, PROCEEDING, TRYING, Transaction


class ClientNonInviteTransaction(Transaction):
    __slots__ = ()

    def start(self, now: float, out: list[Action]) -> None:
        """Request from TU: send it, start E (unreliable only) and F."""
        self.state = TRYING
        out.append(Send(self.request, self.peer, self.key))
        timers = self.env.timers
        if timers.e is not None:
            self._arm_retransmit(timers.e, now, "E")
        self._arm_timeout(timers.f, now, "F")

    def on_response(self, response: Response, now: float, out: list[Action]) -> None:
        state = self.state
        if state is TRYING or state is PROCEEDING:
            if response.status < 200:
                # E keeps its deadline; from its next firing it repeats every T2.
                self.state = PROCEEDING
            else:
                self.state = COMPLETED
                self._stop_timers()
                out.append(ResponseReceived(self.key, response))
                self._rest()
                self._linger(self.env.timers.k, now, "K", out)
                return
            out.append(ResponseReceived(self.key, response))
        elif state is COMPLETED:
            # §17.1.2.2: response retransmissions are absorbed while K runs.
            self.env.counters.retransmissions_absorbed += 1
        else:
            self._illegal()

    def on_timer(self, name: str, now: float, out: list[Action]) -> None:
        state = self.state
        if name == "E" and (state is TRYING or state is PROCEEDING):
            self.env.counters.retransmissions_sent += 1
            out.append(Send(self.request, self.peer, self.key, True))
            t2 = self.env.timers.t2
            if state is TRYING:
                interval = self._interval * 2
                self._arm_retransmit(interval if interval < t2 else t2, now, "E")
            else:
                self._arm_retransmit(t2, now, "E")
        elif name == "F" and (state is TRYING or state is PROCEEDING):
            self.env.counters.timeouts += 1
            out.append(TransactionTimeout(self.key, "F"))
            self._terminate(out)
        elif name == "K" and state is COMPLETED:
            self._terminate(out)
        else:
            self._illegal()

    def on_transport_error(self, now: float, out: list[Action]) -> None:
        if self.state is COMPLETED:
            # Figure 6: nothing is sent in Completed, so nothing can fail.
            self._illegal()
            return
        self.env.counters.transport_errors += 1
        out.append(TransportError(self.key))
        self._terminate(out)
