"""Transaction matching keys (RFC 3261 §17.1.3, §17.2.3).

A request from an RFC 3261 element is identified by its top Via branch
(which starts with the magic cookie), the sent-by and the method, ACK
counting as INVITE so the ACK for a non-2xx lands on the INVITE's server
transaction. Requests from RFC 2543 elements carry no such branch (or only
the bare cookie, RFC 4475 badbranch); for them the key holds the Call-ID,
From tag, CSeq number, method and the whole top Via, and the Request-URI and
To tag are compared on the transaction found (``matches_2543``) — the To tag
cannot be in the key because the ACK carries the tag of our response.

A response names its server transaction by the same fields (they are copied
from the request, §8.2.6.2), so the TU's responses are matched without a
handle.
"""

from __future__ import annotations

from ..errors import ParseError
from ..grammar import split_commas
from ..message import Message, Request
from ..via import MAGIC_COOKIE, Via, parse_via
from .actions import TransactionKey

CLIENT = "c"
SERVER = "s"
SERVER_2543 = "2543"


def client_key(branch: str, method: str) -> TransactionKey:
    """§17.1.3: branch of the top Via plus the CSeq method."""
    return (CLIENT, branch, method)


def server_key(message: Message, via: Via, method: str) -> TransactionKey:
    """The server transaction ``message`` belongs to; ``method`` is the
    request method or the response's CSeq method."""
    if method == "ACK":
        method = "INVITE"
    branch = via.branch
    if branch is not None and len(branch) > 7 and branch.startswith(MAGIC_COOKIE):
        return (SERVER, branch, via.host, via.port, method)
    return (SERVER_2543, message.call_id, message.from_.tag, message.cseq.seq, method, via)


def top_via(message: Message) -> Via:
    """The top Via, parsed without filling the message's cache.

    For the TU's responses: the server transaction keeps its last response
    for retransmission, and caching every parsed Via value in it would cost
    hundreds of bytes per live transaction to save a 2 µs parse.
    """
    value = message.get("via")
    if value is None:
        raise ParseError("missing Via")
    if "," in value:
        value = split_commas(value)[0]
    return parse_via(value)


def matches_2543(original: Request, request: Request, response_to_tag: str | None) -> bool:
    """The §17.2.3 checks left out of the RFC 2543 key. ``response_to_tag``
    is the To tag of the response the transaction sent (what an ACK for it
    carries)."""
    if request.uri != original.uri:
        return False
    if request.method == "ACK":
        return response_to_tag is not None and request.to.tag == response_to_tag
    return request.to.tag == original.to.tag
