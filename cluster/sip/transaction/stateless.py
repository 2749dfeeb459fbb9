"""What a proxy needs to act without transaction state (RFC 3261 §16.11).

A worker that owns a Call-ID may not be the one that forwarded the call's
INVITE (a shard died or the ring moved). Deriving the outgoing branch from
the incoming transaction key makes the replacement forward a retransmission
with the branch the callee already saw, so it is absorbed there as a
retransmission instead of ringing a second time (DESIGN §5). Responses with
no client transaction left travel back along their Via stack.
"""

from __future__ import annotations

import hashlib

from ..message import Request, Response
from ..responses import make_response
from ..via import MAGIC_COOKIE, Via
from .peer import Peer

# RFC 3261 §18.2.2 default ports (sips/TLS: §19.1.2, 5061).
_DEFAULT_PORT = {"TLS": 5061, "TLS-SCTP": 5061}


def branch_for(request: Request, salt: str = "") -> str:
    """The branch for forwarding ``request``: the magic cookie and a hash of
    its incoming transaction key (§16.11).

    For an RFC 3261 request that is the incoming branch, sent-by and method;
    for an RFC 2543 one the top Via, Request-URI, From tag, Call-ID, CSeq
    number, method and (except for the INVITE family, below) the To tag —
    "one of these fields will always vary across two different
    transactions". ACK and CANCEL count as INVITE: the CANCEL must be
    forwarded with the INVITE's branch (§9.1, §16.10) and so must the ACK
    for a non-2xx response (§17.1.1.3). An RFC 2543 ACK carries our
    response's To tag, so the INVITE family leaves the To tag out. An ACK for
    a 2xx still gets a branch of its own: it has a new Via branch (RFC 3261
    UACs) or goes to the remote target, another Request-URI (RFC 2543 ones).
    ``salt`` keeps two clusters that see the same request apart (use a
    cluster secret or the advertised host).
    """
    via = request.via
    method = request.method
    if method == "ACK" or method == "CANCEL":
        method = "INVITE"
    branch = via.branch
    if branch is not None and len(branch) > 7 and branch.startswith(MAGIC_COOKIE):
        material = "\x00".join((salt, branch, via.sent_by, method))
    else:
        to_tag = "" if method == "INVITE" else (request.to.tag or "")
        material = "\x00".join((
            salt, "2543", str(via), str(request.uri), request.from_.tag or "",
            request.call_id, str(request.cseq.seq), method, to_tag,
        ))
    digest = hashlib.blake2s(material.encode("utf-8", "surrogateescape"), digest_size=12)
    return MAGIC_COOKIE + digest.hexdigest()


def trying(request: Request) -> Response:
    """A 100 (Trying) for ``request`` (§8.2.6.1: no To tag added, Timestamp
    copied; §16.2: a proxy answers it for the next hop)."""
    return make_response(request, 100)


def forward_response_statelessly(response: Response) -> tuple[Response, Peer] | None:
    """§16.7 step 3 and §16.11: remove our Via and send the response to the
    element named by the next one. None when no Via is left: the response was
    for us and must not be forwarded."""
    vias = response.vias
    if len(vias) < 2:
        return None
    forwarded = response.copy()
    forwarded.pop_via()
    return forwarded, response_destination(vias[1])


def response_destination(via: Via) -> Peer:
    """Where §18.2.2 (with RFC 3581 rport) sends a response whose top Via is
    ``via``. A host that is a domain name (sent-by without ``received``) is
    left for the runtime to resolve per RFC 3263 §5."""
    transport = via.transport
    port = via.port if via.port is not None else _DEFAULT_PORT.get(transport, 5060)
    received = via.received
    if via.reliable:
        # The connection the request came on is preferred; this address is
        # for opening a new one: received (or sent-by) at the sent-by port.
        return Peer(transport, _bare(received or via.host), port)
    maddr = via.maddr
    if maddr:
        return Peer(transport, _bare(maddr), port)
    rport = via.rport
    if rport is not None:
        # RFC 3581 §4: the port the request came from, at the received address.
        port = rport
    return Peer(transport, _bare(received or via.host), port)


def reply_peer(via: Via, source: Peer) -> Peer:
    """Where a server transaction sends its responses (RFC 3261 §18.2.2).

    Over a reliable transport: back on the connection the request came on
    (``source``). Over UDP: the address the request came from — what the
    ``received`` parameter would say — at the port the request asked for:
    the source port when the top Via has ``rport`` (RFC 3581 §4), otherwise
    the sent-by port (default 5060). A client that sends from one port and
    listens on another (sipsak's flood mode does) hears its answers only
    at the sent-by port."""
    if source.reliable:
        return source
    if via.has_rport:
        port = via.rport if via.rport is not None else source.port
    else:
        port = via.port if via.port is not None else _DEFAULT_PORT.get(via.transport, 5060)
    if port == source.port:
        return source
    return Peer(source.transport, source.host, port, source.context)


def _bare(host: str) -> str:
    """IPv6 references lose their brackets, as socket addresses have none."""
    return host[1:-1] if host[:1] == "[" and host[-1:] == "]" else host
