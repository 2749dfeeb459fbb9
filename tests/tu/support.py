"""A transaction user on a hand-advanced clock: messages in, outputs out, no sockets."""

from __future__ import annotations

from cluster.app.api import Application
from cluster.sip import Request, Response, make_response, parse_complete
from cluster.sip.transaction import TimerConfig, TransactionLayer
from cluster.sip.transaction.actions import Send
from cluster.sip.transaction.peer import Peer
from cluster.tu import EdgeRoute, TransactionUser
from nodes.worker.services import Services

US = "192.0.2.1:5060"
"""The address our edge advertises (our Via, Record-Route)."""
EDGE = EdgeRoute("edge-1", None, ("192.0.2.1", 5060), US)
CALLER = Peer("UDP", "198.51.100.7", 5060, EDGE)
WALL = 1_700_000_000.0


def make_tu(app: Application, *, shard: str = "w1", timers: TimerConfig | None = None,
            observer=None, dispatcher=None, record_route: str | None = None) -> TransactionUser:
    services = Services(domains=["example.com"], trusted=["127.0.0.0/8"], nonce_secret=b"k" * 32,
                        nonce_ttl=300, locations=None, users=None, clock=lambda: WALL, dispatcher=dispatcher)
    services.learn_advertise(US)
    return TransactionUser(app, TransactionLayer(timers or TimerConfig()), services, shard=shard,
                           salt="test/", observer=observer, record_route=record_route)


def request(method: str = "INVITE", *, uri: str = "sip:bob@example.com", branch: str = "z9hG4bK-caller-1",
            seq: int = 1, call_id: str = "call-1@198.51.100.7", to_tag: str | None = None,
            extra: tuple[str, ...] = ()) -> Request:
    to = "<sip:bob@example.com>" + (f";tag={to_tag}" if to_tag else "")
    lines = [f"{method} {uri} SIP/2.0",
             f"Via: SIP/2.0/UDP 198.51.100.7:5060;branch={branch};rport",
             "Max-Forwards: 70", "From: <sip:alice@example.com>;tag=a1", f"To: {to}",
             f"Call-ID: {call_id}", f"CSeq: {seq} {method}", *extra, "Content-Length: 0", "", ""]
    message = parse_complete("\r\n".join(lines).encode())
    assert isinstance(message, Request)
    return message


def sent(outputs: list) -> list:
    """The messages of the Send outputs, each as it would be on the wire (parsed back)."""
    return [parse_complete(o.message.to_bytes()) for o in outputs if isinstance(o, Send)]


def statuses(outputs: list) -> list[int]:
    return [m.status for m in sent(outputs) if isinstance(m, Response)]


def requests(outputs: list, method: str) -> list[Request]:
    return [m for m in sent(outputs) if isinstance(m, Request) and m.method == method]


def destinations(outputs: list, method: str) -> list[Peer]:
    return [o.destination for o in outputs
            if isinstance(o, Send) and isinstance(o.message, Request) and o.message.method == method]


def answer(tu: TransactionUser, forwarded: Request, status: int, now: float, *, tag: str = "callee") -> list:
    """The next hop's response to ``forwarded``, received back through the edge."""
    response = make_response(forwarded, status, to_tag=None if status == 100 else tag)
    via = forwarded.via
    peer = Peer("UDP", str(forwarded.uri.host), forwarded.uri.port or 5060, EDGE)
    assert via.host == "192.0.2.1", "the response comes back by our Via"
    return tu.receive(parse_complete(response.to_bytes()), peer, now)


def forwarding(*targets: str, parallel: bool = True, timeout: float | None = None,
               methods: tuple[str, ...] = ("INVITE", "CANCEL", "OPTIONS")) -> Application:
    app = Application("test")

    @app.request(*methods)
    def route(call):
        return call.proxy(targets, parallel=parallel, timeout=timeout)

    return app
