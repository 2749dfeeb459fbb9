"""What the transaction layer asks of its driver: sends and TU events.

The layer is sans-IO (like h11 and aioquic): every call returns a list of
these values and the worker carries them out in order. ``Send`` goes to the
network; the other actions are events for the transaction user (TU, RFC 3261
§17: the proxy, registrar or application above the layer).

Transaction keys are plain tuples (cheap to build and hash on the hot path)
that the TU treats as opaque handles:

* client: ``("c", branch, method)`` (RFC 3261 §17.1.3);
* server, RFC 3261 peer: ``("s", branch, sent-by host, sent-by port, method)``
  with ACK counted as INVITE (§17.2.3);
* server, RFC 2543 peer: ``("2543", Call-ID, From tag, CSeq number, method,
  top Via)``; Request-URI and To tag are checked on the matched transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..message import Message, Request, Response
from ..via import Via
from .peer import Peer

# The keys built in key.py: (CLIENT, branch, method); (SERVER, branch,
# sent-by host, port, method); (SERVER_2543, Call-ID, From tag, CSeq number,
# method, top Via).
TransactionKey = (
    tuple[str, str, str]
    | tuple[str, str, str, int | None, str]
    | tuple[str, str, str | None, int, str, Via]
)


@dataclass(frozen=True, slots=True)
class Send:
    """Put ``message`` on the wire towards ``destination``.

    ``key`` names the transaction the send belongs to (None for stateless
    sends) so the runtime can report a failure with
    ``TransactionLayer.transport_error(key, now)``; ``retransmission`` marks
    timer- or retransmission-driven copies (for metrics).
    """

    message: Message
    destination: Peer
    key: TransactionKey | None = None
    retransmission: bool = False


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """A new request created server transaction ``key``; the TU must answer it
    through ``TransactionLayer.send_response`` (RFC 3261 §17.2)."""

    key: TransactionKey
    request: Request
    source: Peer


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """A response for client transaction ``key`` (RFC 3261 §17.1), including
    every 2xx to an INVITE while Accepted (RFC 6026 §7.2: retransmitted and
    forked 2xx are the TU's to acknowledge)."""

    key: TransactionKey
    response: Response


@dataclass(frozen=True, slots=True)
class AckReceived:
    """An ACK the TU must handle: one for a 2xx (no transaction, RFC 3261
    §17.2.3; ``key`` None) or one matching an INVITE server transaction in the
    Accepted state (RFC 6026 §7.1; ``key`` set). ACKs for non-2xx responses
    are absorbed by their transaction and never appear here."""

    request: Request
    source: Peer
    key: TransactionKey | None = None


@dataclass(frozen=True, slots=True)
class CancelReceived:
    """A new CANCEL (RFC 3261 §9.2). ``key`` is the INVITE server transaction
    it cancels, None when none matches (a UAS answers 481, a proxy forwards
    statelessly, §16.10). The CANCEL has its own server transaction
    ``cancel_key``, which the TU answers like any request."""

    key: TransactionKey | None
    request: Request
    source: Peer
    cancel_key: TransactionKey


@dataclass(frozen=True, slots=True)
class TransactionTimeout:
    """``timer`` fired without the awaited message: B or F (the TU acts as if
    a 408 arrived, RFC 3261 §8.1.3.1), H (no ACK for a non-2xx final response,
    §17.2.1), or C (an INVITE with only provisional responses, §16.8: the
    proxy sends CANCEL; the transaction lingers 64·T1 for the final
    response)."""

    key: TransactionKey
    timer: str


@dataclass(frozen=True, slots=True)
class TransportError:
    """The runtime reported that a send for ``key`` failed (RFC 3261 §17.1.4,
    §17.2.4)."""

    key: TransactionKey


@dataclass(frozen=True, slots=True)
class TransactionTerminated:
    """Transaction ``key`` reached Terminated and is forgotten."""

    key: TransactionKey


@dataclass(frozen=True, slots=True)
class StrayResponse:
    """A response that matches no client transaction (RFC 3261 §18.1.2 as
    updated by RFC 6026: a proxy forwards it statelessly, §16.11; a UA
    drops it)."""

    response: Response
    source: Peer


Action = (
    Send | RequestReceived | ResponseReceived | AckReceived | CancelReceived
    | TransactionTimeout | TransportError | TransactionTerminated | StrayResponse
)
