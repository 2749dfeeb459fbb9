"""The SIP transaction layer (RFC 3261 §17, RFC 6026), sans-IO.

    >>> from cluster.sip.transaction import TransactionLayer, Peer
    >>> layer = TransactionLayer()
    >>> actions = layer.receive(request, Peer("UDP", "192.0.2.1", 5060), now)
    >>> layer.handle_timer(layer.next_deadline())

``stateless`` holds what a proxy needs without transaction state
(§16.11 branches, stateless response forwarding).
"""

from .actions import (
    AckReceived, Action, CancelReceived, RequestReceived, ResponseReceived, Send,
    StrayResponse, TransactionKey, TransactionTerminated, TransactionTimeout, TransportError,
)
from .client_invite import ClientInviteTransaction
from .client_non_invite import ClientNonInviteTransaction
from .layer import TransactionLayer, TransactionObserver
from .machine import (
    ACCEPTED, CALLING, COMPLETED, CONFIRMED, PROCEEDING, TERMINATED, TRYING,
    TransactionCounters,
)
from .peer import Peer
from .server_invite import ServerInviteTransaction
from .server_non_invite import ServerNonInviteTransaction
from .stateless import branch_for, forward_response_statelessly, response_destination, trying
from .timers import TimerConfig, Timers

__all__ = [
    "ACCEPTED", "AckReceived", "Action", "CALLING", "COMPLETED", "CONFIRMED", "CancelReceived",
    "ClientInviteTransaction", "ClientNonInviteTransaction", "PROCEEDING", "Peer",
    "RequestReceived", "ResponseReceived", "Send", "ServerInviteTransaction",
    "ServerNonInviteTransaction", "StrayResponse", "TERMINATED", "TRYING", "TimerConfig",
    "Timers", "TransactionCounters", "TransactionKey", "TransactionLayer", "TransactionObserver",
    "TransactionTerminated", "TransactionTimeout", "TransportError", "branch_for",
    "forward_response_statelessly", "response_destination", "trying",
]
