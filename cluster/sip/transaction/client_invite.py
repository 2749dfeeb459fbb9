"""The INVITE client transaction (RFC 3261 §17.1.1, Figure 5; RFC 6026 §7.2).

    Calling --1xx--> Proceeding --300-699: ACK--> Completed --D--> Terminated
      |   \\                  \\--2xx--> Accepted --M--> Terminated
      |    \\--300-699: ACK (Completed) or 2xx (Accepted)
      +--B or transport error (also from Completed)--> Terminated

RFC 6026 replaces "2xx: Terminated" with the Accepted state: every 2xx that
arrives for 64·T1 (Timer M) — retransmissions and forked answers alike — goes
to the TU, which sends the ACK for each (§13.2.2.4). The transaction ACKs
non-2xx final responses itself (§17.1.1.3).
"""

from __future__ import annotations

from ..message import Header, Request, Response
from .actions import (
    Action, ResponseReceived, Send, TransactionTimeout, TransportError,
)
from .machine import ACCEPTED, CALLING, COMPLETED, PROCEEDING, Transaction


class ClientInviteTransaction(Transaction):
    __slots__ = ("ack",)

    ack: Request | None

    def start(self, now: float, out: list[Action]) -> None:
        """INVITE from TU: send it, start A (unreliable only) and B."""
        self.ack = None
        self.state = CALLING
        out.append(Send(self.request, self.peer, self.key))
        timers = self.env.timers
        if timers.a is not None:
            self._arm_retransmit(timers.a, now, "A")
        self._arm_timeout(timers.b, now, "B")

    def on_response(self, response: Response, now: float, out: list[Action]) -> None:
        status = response.status
        state = self.state
        if state is CALLING or state is PROCEEDING:
            if status < 200:
                timers = self.env.timers
                if state is CALLING:
                    # §17.1.1.2: no more retransmissions; B only guards Calling.
                    self.state = PROCEEDING
                    self._stop_timers()
                    if timers.c is not None:
                        self._arm_timeout(timers.c, now, "C")
                elif status > 100 and timers.c is not None and self._timeout is not None \
                        and self._timeout[3] == "C":
                    # §16.7 step 2: a provisional response other than 100 resets C.
                    self._arm_timeout(timers.c, now, "C")
                out.append(ResponseReceived(self.key, response))
            elif status < 300:
                self.state = ACCEPTED
                self._stop_timers()
                self._arm_timeout(self.env.timers.m, now, "M")
                self._rest()
                out.append(ResponseReceived(self.key, response))
            else:
                self.state = COMPLETED
                self._stop_timers()
                ack = self.ack = _ack_for(self.request, response)
                out.append(Send(ack, self.peer, self.key))
                out.append(ResponseReceived(self.key, response))
                self._rest(ack)
                self._linger(self.env.timers.d, now, "D", out)
        elif state is COMPLETED:
            if status >= 300 and self.ack is not None:
                # §17.1.1.2: a retransmitted final response gets the ACK again
                # and is not passed up.
                counters = self.env.counters
                counters.retransmissions_absorbed += 1
                counters.retransmissions_sent += 1
                out.append(Send(self.ack, self.peer, self.key, True))
            else:
                self._illegal()
        elif state is ACCEPTED and 200 <= status < 300:
            out.append(ResponseReceived(self.key, response))
        else:
            self._illegal()

    def on_timer(self, name: str, now: float, out: list[Action]) -> None:
        state = self.state
        if name == "A" and state is CALLING:
            # §17.1.1.2: T1, 2·T1, 4·T1, ... with no ceiling, until B fires.
            self.env.counters.retransmissions_sent += 1
            out.append(Send(self.request, self.peer, self.key, True))
            self._arm_retransmit(self._interval * 2, now, "A")
        elif name == "B" and state is CALLING:
            self.env.counters.timeouts += 1
            out.append(TransactionTimeout(self.key, "B"))
            self._terminate(out)
        elif name == "C" and state is PROCEEDING:
            # §16.8: the TU CANCELs; §9.1: give the final response 64·T1.
            self.env.counters.timeouts += 1
            out.append(TransactionTimeout(self.key, "C"))
            self._arm_timeout(self.env.timers.b, now, "B")
        elif name == "B" and state is PROCEEDING:
            self._terminate(out)
        elif (name == "D" and state is COMPLETED) or (name == "M" and state is ACCEPTED):
            self._terminate(out)
        else:
            self._illegal()

    def on_transport_error(self, now: float, out: list[Action]) -> None:
        if self.state is PROCEEDING or self.state is ACCEPTED:
            # Figure 5: nothing is sent in these states (the ACK for a 2xx is
            # the TU's), and the final response may still arrive, on a new
            # connection if need be (§18.2.2).
            self._illegal()
            return
        self.env.counters.transport_errors += 1
        out.append(TransportError(self.key))
        self._terminate(out)


def _ack_for(invite: Request, response: Response) -> Request:
    """The ACK for a non-2xx final response (RFC 3261 §17.1.1.3).

    Request-URI, Call-ID, From, CSeq number and Route set come from the
    INVITE, To from the response (it carries the UAS's tag), and the single
    Via equals the INVITE's top Via so the ACK matches the same server
    transaction. Max-Forwards is copied because every request needs one
    (§8.1.1.6).
    """
    ack = Request("ACK", invite.uri)
    add = ack.headers.append
    via_done = False
    for h in invite.headers:
        key = h.key
        if key == "via":
            if not via_done:
                via_done = True
                if "," in h.value:
                    add(Header("via", h.name, str(invite.via)))
                else:
                    add(Header("via", h.name, h.value, h.raw))
        elif key in ("max-forwards", "route", "from", "call-id"):
            add(Header(key, h.name, h.value, h.raw))
    for h in response.headers:
        if h.key == "to":
            add(Header("to", h.name, h.value, h.raw))
            break
    add(Header("cseq", "CSeq", f"{invite.cseq.seq} ACK"))
    add(Header("content-length", "Content-Length", "0"))
    return ack
