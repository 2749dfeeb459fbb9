"""The non-INVITE server transaction (RFC 3261 §17.2.2, Figure 8).

    Trying --1xx from TU--> Proceeding --200-699 from TU--> Completed --J--> Terminated
      \\______________200-699 from TU_______________^
    Proceeding, Completed --transport error--> Terminated

A retransmitted request is absorbed in Trying and answered with the last
response in Proceeding and Completed; Timer J (64·T1 on unreliable
transports, 0 on reliable ones) keeps the final response for them.
"""

from __future__ import annotations

from ..message import Request, Response
from .actions import Action, Send, TransportError
from .machine import COMPLETED, PROCEEDING, TRYING, Transaction
from .peer import Peer


class ServerNonInviteTransaction(Transaction):
    __slots__ = ("response",)

    response: Response | None

    def start(self, now: float, out: list[Action], event: Action) -> None:
        """Request received: pass it to the TU (``event`` is a
        RequestReceived, or a CancelReceived for CANCEL)."""
        self.state = TRYING
        self.response = None
        out.append(event)

    def on_request(self, request: Request, source: Peer, now: float, out: list[Action]) -> None:
        counters = self.env.counters
        counters.retransmissions_absorbed += 1
        response = self.response
        if response is not None:
            counters.retransmissions_sent += 1
            out.append(Send(response, self.peer, self.key, True))

    def on_tu_response(self, response: Response, now: float, out: list[Action]) -> None:
        state = self.state
        if state is TRYING or state is PROCEEDING:
            self.response = response
            out.append(Send(response, self.peer, self.key))
            if response.status >= 200:
                self.state = COMPLETED
                self._rest(response)
                self._linger(self.env.timers.j, now, "J", out)
            else:
                self.state = PROCEEDING
        else:
            self._illegal()

    def on_timer(self, name: str, now: float, out: list[Action]) -> None:
        if name == "J" and self.state is COMPLETED:
            self._terminate(out)
        else:
            self._illegal()

    def on_transport_error(self, now: float, out: list[Action]) -> None:
        if self.state is TRYING:
            self._illegal()  # nothing has been sent yet
            return
        self.env.counters.transport_errors += 1
        out.append(TransportError(self.key))
        self._terminate(out)
