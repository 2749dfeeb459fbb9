"""The transaction layer (RFC 3261 §17), sans-IO.

The worker drives it with four inputs and executes the returned actions in
order::

    actions = layer.receive(message, source, now)      # parsed from the wire
    key, actions = layer.send_request(request, peer, now)  # TU → client transaction
    actions = layer.send_response(response, now)       # TU → server transaction
    actions = layer.handle_timer(now)                  # at layer.next_deadline()

plus ``transport_error(key, now)`` when a ``Send`` for ``key`` failed.
Time is always a parameter; the layer reads no clock and does no I/O.
"""

from __future__ import annotations

from typing import Protocol

from ..errors import ParseError
from ..message import Message, Request, Response
from ..responses import make_response
from .actions import (
    AckReceived, Action, CancelReceived, RequestReceived, Send, StrayResponse,
    TransactionKey,
)
from .client_invite import ClientInviteTransaction
from .client_non_invite import ClientNonInviteTransaction
from .key import CLIENT, SERVER_2543, client_key, matches_2543, server_key, top_via
from .machine import (
    TERMINATED, Environment, Transaction, TransactionCounters,
)
from .peer import Peer
from .stateless import reply_peer
from .server_invite import ServerInviteTransaction
from .server_non_invite import ServerNonInviteTransaction
from .timers import TimerConfig, TimerQueue

# §8.2.2.2: From tag, Call-ID, CSeq number and method.
_MergeKey = tuple[str | None, str, int, str]


class TransactionObserver(Protocol):
    """Sees what the layer does, without the layer knowing why (metrics)."""

    def client_started(self, key: TransactionKey) -> None:
        """``send_request`` created client transaction ``key``."""

    def actions(self, actions: list[Action], now: float) -> None:
        """What one input returned, before the caller carries it out; it must
        not change the list."""


class TransactionLayer:
    """Client and server transactions of one worker.

    ``config``: T1, T2, T4 and the timers derived from them. ``send_trying``: INVITE server transactions answer 100 (Trying) at once
    (§17.2.1). ``reject_merged``: answer 482 to merged requests (§8.2.2.2);
    off by default because a proxy must forward them (the copies of a forked
    request legitimately meet again downstream only at a UAS). ``observer``
    sees every input's actions (``TransactionObserver``).
    """

    def __init__(
        self,
        config: TimerConfig | None = None,
        *,
        send_trying: bool = True,
        reject_merged: bool = False,
        observer: TransactionObserver | None = None,
    ) -> None:
        self.config = config if config is not None else TimerConfig()
        self.counters = TransactionCounters()
        self._queue: TimerQueue[Transaction] = TimerQueue()
        self._resting: list[Message] = []
        self._reliable = Environment(self.config.for_transport(True), self._queue, self.counters,
                                     self._resting)
        self._unreliable = Environment(self.config.for_transport(False), self._queue, self.counters,
                                       self._resting)
        self._observer = observer
        self._send_trying = send_trying
        self._reject_merged = reject_merged
        self._client: dict[TransactionKey, Transaction] = {}
        self._server: dict[TransactionKey, Transaction] = {}
        # §8.2.2.2: (From tag, Call-ID, CSeq number, method) -> server key.
        self._merged: dict[_MergeKey, TransactionKey] = {}
        # Each transaction's own merge key, kept so that forgetting it does
        # not read its (by then compacted) request again.
        self._merged_of: dict[TransactionKey, _MergeKey] = {}

    # -- introspection ------------------------------------------------------------

    def rest(self) -> int:
        """Compact the messages of transactions that started waiting since the
        last call (Message.compact); the caller invokes it when it is done
        with the current inputs' actions. Returns how many were compacted."""
        resting = self._resting
        count = len(resting)
        for message in resting:
            message.compact()
        resting.clear()
        return count

    def __len__(self) -> int:
        """Live transactions, client and server."""
        return len(self._client) + len(self._server)

    def pending(self) -> int:
        """Transactions still waiting for a final response (client) or still
        owing one (server): what a draining worker must see through."""
        waiting = ("Calling", "Trying", "Proceeding")
        return sum(1 for t in self._client.values() if t.state in waiting) + sum(
            1 for t in self._server.values() if t.state in waiting)

    def state(self, key: TransactionKey) -> str | None:
        """The RFC state name of transaction ``key``, None once it is gone."""
        txn = self._find(key)
        return None if txn is None else txn.state

    def request_of(self, key: TransactionKey) -> Request | None:
        """The request that created transaction ``key`` (e.g. the INVITE a
        CANCEL targets, to answer it 487), None once it is gone."""
        txn = self._find(key)
        return None if txn is None else txn.request

    def peer_of(self, key: TransactionKey) -> Peer | None:
        """Where transaction ``key`` sends: the client transaction's
        destination (a CANCEL goes to the same place as its INVITE, §9.1) or
        the server transaction's source."""
        txn = self._find(key)
        return None if txn is None else txn.peer

    def _find(self, key: TransactionKey) -> Transaction | None:
        return (self._client if key[0] == CLIENT else self._server).get(key)

    def next_deadline(self) -> float | None:
        """When ``handle_timer`` must next be called (absolute, same clock as ``now``)."""
        return self._queue.next_deadline()

    # -- inputs ---------------------------------------------------------------------

    def receive(self, message: Message, source: Peer, now: float) -> list[Action]:
        """A message parsed from the network."""
        return self._observed(self._receive(message, source, now), now)

    def _receive(self, message: Message, source: Peer, now: float) -> list[Action]:
        try:
            if isinstance(message, Request):
                return self._receive_request(message, source, now)
            if isinstance(message, Response):
                return self._receive_response(message, source, now)
        except ParseError:
            # A hand-built message lacking Via/CSeq/...: the parser never
            # returns one, and the layer must not raise on input.
            pass
        self.counters.malformed += 1
        return []

    def send_request(
        self, request: Request, destination: Peer, now: float
    ) -> tuple[TransactionKey | None, list[Action]]:
        """Start a client transaction for ``request``, whose top Via already
        carries an RFC 3261 branch (§8.1.1.7). An ACK (for a 2xx: §17.1.1.3
        ACKs are the transaction's own) is sent without a transaction and
        gives the key None. Raises ValueError for a missing or reused branch:
        that is a TU bug, not network input."""
        method = request.method
        if method == "ACK":
            return None, self._observed([Send(request, destination)], now)
        via = request.via
        if not via.rfc3261_branch:
            raise ValueError("a client transaction needs an RFC 3261 branch in the top Via")
        key = client_key(via.branch, method)  # type: ignore[arg-type]  # checked just above
        if key in self._client:
            raise ValueError(f"client transaction {key!r} already exists")
        env = self._reliable if destination.reliable else self._unreliable
        txn: ClientInviteTransaction | ClientNonInviteTransaction
        if method == "INVITE":
            txn = ClientInviteTransaction(key, request, destination, env)
        else:
            txn = ClientNonInviteTransaction(key, request, destination, env)
        self._client[key] = txn
        self.counters.client_created += 1
        if self._observer is not None:
            self._observer.client_started(key)
        out: list[Action] = []
        txn.start(now, out)
        return key, self._observed(out, now)

    def send_response(self, response: Response, now: float) -> list[Action]:
        """A response from the TU, matched to its server transaction by the
        top Via and CSeq method it copied from the request (§17.2.3) and sent
        to where the request came from. A response whose transaction is gone
        (it timed out, or was never created) is counted and dropped: send it
        statelessly if it must go out (a 2xx after Timer L, §13.3.1.4)."""
        try:
            key = server_key(response, top_via(response), response.cseq.method)
        except ParseError:
            self.counters.malformed += 1
            return []
        txn = self._server.get(key)
        if txn is None:
            self.counters.unmatched_tu_responses += 1
            return []
        out: list[Action] = []
        txn.on_tu_response(response, now, out)
        if txn.state is TERMINATED:
            self._forget(txn)
        return self._observed(out, now)

    def handle_timer(self, now: float) -> list[Action]:
        """Fire every timer due at ``now``: O(expired · log n), however many
        transactions are alive."""
        out: list[Action] = []
        for txn, name in self._queue.expired(now):
            txn.on_timer(name, now, out)
            if txn.state is TERMINATED:
                self._forget(txn)
        return self._observed(out, now)

    def transport_error(self, key: TransactionKey, now: float) -> list[Action]:
        """The runtime could not deliver a ``Send`` of transaction ``key``."""
        txn = self._find(key)
        if txn is None:
            return []
        out: list[Action] = []
        txn.on_transport_error(now, out)
        if txn.state is TERMINATED:
            self._forget(txn)
        return self._observed(out, now)

    def _observed(self, out: list[Action], now: float) -> list[Action]:
        if self._observer is not None:
            self._observer.actions(out, now)
        return out

    # -- requests -------------------------------------------------------------------

    def _receive_request(self, request: Request, source: Peer, now: float) -> list[Action]:
        method = request.method
        key = server_key(request, request.via, method)
        txn = self._server.get(key)
        out: list[Action] = []
        if txn is not None:
            if key[0] != SERVER_2543 or matches_2543(txn.request, request, _to_tag(txn)):
                txn.on_request(request, source, now, out)
                if txn.state is TERMINATED:
                    self._forget(txn)
                return out
            if method != "ACK":
                # An RFC 2543 request colliding with another one's key and
                # differing only in Request-URI or To tag: no way to keep both.
                self.counters.illegal_inputs += 1
                return out
        if method == "ACK":
            # §17.2.3: an ACK matching no transaction acknowledges a 2xx.
            self.counters.stray_acks += 1
            out.append(AckReceived(request, source))
            return out

        merged_key = None
        if self._reject_merged:
            merged_key = self._merged_key(request)
            if merged_key is not None and merged_key in self._merged:
                return self._reject_as_merged(key, request, source, now)

        env = self._reliable if source.reliable else self._unreliable
        self.counters.server_created += 1
        # The TU sees where the request came from; the transaction answers
        # where §18.2.2 says responses go.
        peer = reply_peer(request.via, source)
        if method == "INVITE":
            invite = ServerInviteTransaction(key, request, peer, env)
            self._server[key] = invite
            invite.start(now, out, self._send_trying)
        else:
            event: Action
            if method == "CANCEL":
                event = CancelReceived(self._cancelled(request), request, source, key)
            else:
                event = RequestReceived(key, request, source)
            other = ServerNonInviteTransaction(key, request, peer, env)
            self._server[key] = other
            other.start(now, out, event)
        if merged_key is not None:
            self._merged[merged_key] = key
            self._merged_of[key] = merged_key
        return out

    def _cancelled(self, cancel: Request) -> TransactionKey | None:
        """§9.2: the INVITE server transaction a CANCEL targets — §17.2.3
        matching with the method taken as INVITE."""
        key = server_key(cancel, cancel.via, "INVITE")
        txn = self._server.get(key)
        if txn is None or not isinstance(txn, ServerInviteTransaction):
            return None
        if key[0] == SERVER_2543 and not matches_2543(txn.request, cancel, None):
            return None
        return key

    # -- merged requests (§8.2.2.2) -------------------------------------------------------

    @staticmethod
    def _merged_key(request: Request) -> _MergeKey | None:
        if request.to.tag is not None:
            return None
        cseq = request.cseq
        return (request.from_.tag, request.call_id, cseq.seq, cseq.method)

    def _reject_as_merged(
        self, key: TransactionKey, request: Request, source: Peer, now: float
    ) -> list[Action]:
        """Same From tag, Call-ID and CSeq as a live transaction but a
        different transaction: a copy that reached us by another path. It
        gets its own server transaction (so its retransmissions get the same
        answer) and a 482 that never involves the TU."""
        self.counters.merged_requests += 1
        self.counters.server_created += 1
        env = self._reliable if source.reliable else self._unreliable
        out: list[Action] = []
        peer = reply_peer(request.via, source)
        txn: ServerInviteTransaction | ServerNonInviteTransaction
        if request.method == "INVITE":
            txn = ServerInviteTransaction(key, request, peer, env)
            txn.start(now, [], False)
        else:
            txn = ServerNonInviteTransaction(key, request, peer, env)
            txn.start(now, [], RequestReceived(key, request, source))
        self._server[key] = txn
        txn.on_tu_response(make_response(request, 482), now, out)
        if txn.state is TERMINATED:
            self._forget(txn)
        return out

    # -- responses ------------------------------------------------------------------

    def _receive_response(self, response: Response, source: Peer, now: float) -> list[Action]:
        branch = response.via.branch
        txn = None
        if branch is not None:
            txn = self._client.get(client_key(branch, response.cseq.method))
        if txn is None:
            self.counters.stray_responses += 1
            return [StrayResponse(response, source)]
        out: list[Action] = []
        txn.on_response(response, now, out)
        if txn.state is TERMINATED:
            self._forget(txn)
        return out

    # -- bookkeeping ------------------------------------------------------------------

    def _forget(self, txn: Transaction) -> None:
        key = txn.key
        if key[0] == CLIENT:
            self._client.pop(key, None)
            return
        if self._server.get(key) is txn:
            del self._server[key]
        if self._merged_of:
            merged_key = self._merged_of.pop(key, None)
            if merged_key is not None and self._merged.get(merged_key) == key:
                del self._merged[merged_key]


def _to_tag(txn: Transaction) -> str | None:
    response = getattr(txn, "response", None)
    return None if response is None else response.to.tag
