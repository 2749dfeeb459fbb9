"""Message factories and a timer driver for the transaction-layer tests."""

from __future__ import annotations

from cluster.sip import Request, Response, make_response, parse_message
from cluster.sip.transaction import Peer, Send, TransactionLayer

UDP = Peer("UDP", "192.0.2.10", 5060)
TCP = Peer("TCP", "192.0.2.10", 5060, context="conn-7")
SERVER = Peer("UDP", "198.51.100.20", 5060)
SERVER_TCP = Peer("TCP", "198.51.100.20", 5060, context="conn-9")


def request(
    method: str = "INVITE",
    branch: str | None = "z9hG4bKabc1",
    *,
    transport: str = "UDP",
    sent_by: str = "client.example.com:5060",
    uri: str = "sip:bob@example.com",
    to_tag: str | None = None,
    from_tag: str | None = "ft1",
    call_id: str = "call-1@client.example.com",
    seq: int = 1,
    cseq_method: str | None = None,
    extra_vias: tuple[str, ...] = (),
    headers: tuple[str, ...] = (),
) -> Request:
    via = f"Via: SIP/2.0/{transport} {sent_by}" + (f";branch={branch}" if branch else "")
    lines = [f"{method} {uri} SIP/2.0", via]
    lines += [f"Via: {v}" for v in extra_vias]
    lines += [
        "Max-Forwards: 70",
        "To: <sip:bob@example.com>" + (f";tag={to_tag}" if to_tag else ""),
        "From: <sip:alice@example.com>" + (f";tag={from_tag}" if from_tag else ""),
        f"Call-ID: {call_id}",
        f"CSeq: {seq} {cseq_method or method}",
        *headers,
        "Content-Length: 0",
    ]
    message = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(message, Request)
    return message


def response(req: Request, status: int, to_tag: str | None = "tt1") -> Response:
    if status == 100 or req.to.tag is not None:
        return make_response(req, status)
    return make_response(req, status, to_tag=to_tag)


def ack_for(invite: Request, resp: Response, branch: str | None = None) -> Request:
    """An ACK as a UAC sends it: same branch for a non-2xx, a new one for 2xx."""
    return request(
        "ACK", branch or invite.via.branch, uri=str(invite.uri), to_tag=resp.to.tag,
        from_tag=invite.from_.tag, call_id=invite.call_id, seq=invite.cseq.seq,
        sent_by=invite.via.sent_by, transport=invite.via.transport,
    )


def sends(actions: list) -> list[Send]:
    return [a for a in actions if isinstance(a, Send)]


def of_type(actions: list, kind: type) -> list:
    return [a for a in actions if isinstance(a, kind)]


def run_timers(layer: TransactionLayer, until: float) -> list[tuple[float, object]]:
    """Fire every deadline up to ``until``; each action with its firing time."""
    fired: list[tuple[float, object]] = []
    while (deadline := layer.next_deadline()) is not None and deadline <= until:
        fired.extend((deadline, action) for action in layer.handle_timer(deadline))
    return fired
