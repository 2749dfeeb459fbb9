"""SIP over WebSocket, server side (RFC 7118 over RFC 6455), sans-IO.

Bytes from the connection go in with ``now``; what to write back, the SIP
messages read and whether to close come out (``WsOutput``). The HTTP upgrade
and the frames are wsproto's (a sans-IO library by the h11 authors); this
module adds what RFC 7118 and the edge need on top:

- the upgrade must offer the ``sip`` subprotocol (RFC 7118 §4) and come from
  an allowed Origin (RFC 6455 §10.2); otherwise 400 or 403 and close;
  a request that is not a valid upgrade at all is answered 400;
- each message is one SIP message (RFC 7118 §5.1): its size is bounded, and
  a message whose first line is neither a request line nor a status line
  is dropped (counted), not forwarded;
- a silent connection gets a ping after ``ping_interval``, and is closed
  when still silent one interval later; the upgrade itself must finish
  within ``handshake_timeout``.

Every refusal is named in ``WsOutput.events`` (the edge counts them).
"""

from __future__ import annotations

import math

from dataclasses import dataclass

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection, BytesMessage, CloseConnection, Event, Message, Ping, Pong, RejectConnection, Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

__all__ = ["SUBPROTOCOL", "SipWebSocket", "WsOutput", "looks_like_sip"]

SUBPROTOCOL = "sip"
"""RFC 7118 §4: the WebSocket subprotocol registered for SIP."""

# RFC 6455 §7.4.1 close codes.
_GOING_AWAY = 1001
_POLICY = 1008  # RFC 6455 §7.4.1: policy violation
_TOO_BIG = 1009

_BAD_REQUEST = (b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
_KEEPALIVES = frozenset((b"\r\n", b"\r\n\r\n"))


@dataclass(frozen=True, slots=True)
class WsOutput:
    """What one input produced: bytes to write, SIP messages read (in order),
    whether the connection is to be closed once ``data`` is written, and the
    names of what happened worth counting (``ws_origin_refused`` …)."""

    data: bytes = b""
    messages: tuple[bytes, ...] = ()
    close: bool = False
    events: tuple[str, ...] = ()


def looks_like_sip(message: bytes) -> bool:
    """A SIP request line (``METHOD uri SIP/2.0``) or status line
    (``SIP/2.0 code``) first: anything else is not SIP (RFC 3261 §7.1, §7.2)."""
    end = message.find(b"\r\n")
    first = message if end < 0 else message[:end]
    return first.startswith(b"SIP/2.0 ") or (first.endswith(b" SIP/2.0") and first.count(b" ") >= 2)


class SipWebSocket:
    """One server-side WebSocket connection carrying SIP."""

    __slots__ = ("_ws", "max_message", "origins", "ping_interval", "message_timeout", "open", "closed",
                 "_deadline", "_pinged", "_parts", "_size", "_started")

    def __init__(self, *, max_message: int, origins: frozenset[str], ping_interval: float,
                 handshake_timeout: float, now: float, message_timeout: float = math.inf) -> None:
        self._ws = WSConnection(ConnectionType.SERVER)
        self.max_message = max_message
        self.origins = origins
        """Allowed Origin values, lower case; empty allows any."""
        self.ping_interval = ping_interval
        self.message_timeout = message_timeout
        """Seconds a message may take from its first byte to its last (as
        TCP's ``edge.tcp_message_timeout``): bytes trickled in to keep a
        connection and its buffers busy without ever finishing a frame."""
        self.open = False
        self.closed = False
        self._deadline = now + handshake_timeout
        self._pinged = False
        self._parts: list[bytes] = []
        self._size = 0
        self._started = math.inf
        """When the first byte of the message not yet complete arrived."""

    def deadline(self) -> float:
        """When ``handle_timer`` is due."""
        return min(self._deadline, self._started + self.message_timeout)

    def handle_timer(self, now: float) -> WsOutput:
        if self.closed or now < self.deadline():
            return WsOutput()
        if now >= self._started + self.message_timeout:
            return self._close(_POLICY, "message too slow", "ws_slow_message")
        if not self.open:
            self.closed = True
            return WsOutput(close=True, events=("ws_upgrade_timeout",))
        if self._pinged:
            # RFC 6455 §5.5.2: no pong (nor anything else) for a whole interval.
            return self._close(_GOING_AWAY, "keep-alive timeout", "ws_ping_timeout")
        self._pinged = True
        self._deadline = now + self.ping_interval
        return WsOutput(self._ws.send(Ping(b"sipcluster")))

    def receive(self, data: bytes, now: float) -> WsOutput:
        """Bytes read from the connection (``b""`` for its end)."""
        if self.closed:
            return WsOutput()
        if self.open:
            self._pinged = False
            self._deadline = now + self.ping_interval
        try:
            self._ws.receive_data(data or None)
            events = list(self._ws.events())
            out = self._events(now, events)
        except RemoteProtocolError:
            self.closed = True
            if self.open:
                # wsproto has already answered a frame error with a close
                # (RFC 6455 §7.1.7); nothing more to say.
                return WsOutput(close=True, events=("ws_protocol_error",))
            return WsOutput(_BAD_REQUEST, close=True, events=("ws_bad_upgrade",))
        if self.open and (self._parts or (data and not events)):
            # Part of a frame, or of a message fragmented over frames, waits
            # for the rest: its clock starts with its first byte.
            self._started = min(self._started, now)
        else:
            self._started = math.inf
        return out

    def send_message(self, message: bytes) -> bytes:
        """The frame carrying one SIP message (RFC 7118 §5.1: text when it is
        UTF-8, binary otherwise). Empty when the connection is not open."""
        if not self.open or self.closed:
            return b""
        try:
            text = message.decode("utf-8")
        except UnicodeDecodeError:
            return self._ws.send(Message(data=message))
        return self._ws.send(Message(data=text))

    # -- internals ---------------------------------------------------------------

    def _events(self, now: float, received: list[Event]) -> WsOutput:
        out = bytearray()
        messages: list[bytes] = []
        events: list[str] = []
        for event in received:
            if isinstance(event, Request):
                refusal = self._refusal(event)
                if refusal is not None:
                    status, name = refusal
                    self.closed = True
                    out += self._ws.send(RejectConnection(status_code=status))
                    return WsOutput(bytes(out), tuple(messages), True, (*events, name))
                out += self._ws.send(AcceptConnection(subprotocol=SUBPROTOCOL))
                self.open = True
                self._deadline = now + self.ping_interval
            elif isinstance(event, (TextMessage, BytesMessage)):
                chunk = event.data.encode("utf-8") if isinstance(event, TextMessage) else bytes(event.data)
                self._size += len(chunk)
                if self._size > self.max_message:
                    closing = self._close(_TOO_BIG, "message too big", "ws_oversize")
                    return WsOutput(bytes(out) + closing.data, tuple(messages), True, (*events, *closing.events))
                self._parts.append(chunk)
                if event.message_finished:
                    message = b"".join(self._parts)
                    self._parts, self._size = [], 0
                    if message in _KEEPALIVES:
                        # RFC 5626 §3.5.1 CRLF keep-alive carried in a frame.
                        events.append("ws_keepalive")
                        out += self._ws.send(Message(data="\r\n"))
                    elif looks_like_sip(message):
                        messages.append(message)
                    else:
                        events.append("ws_not_sip")
            elif isinstance(event, Ping):
                out += self._ws.send(event.response())
            elif isinstance(event, CloseConnection):
                self.closed = True
                try:
                    out += self._ws.send(event.response())
                except LocalProtocolError:
                    pass  # our own close crossed theirs
                return WsOutput(bytes(out), tuple(messages), True, tuple(events))
            elif isinstance(event, Pong):
                pass
            else:
                _ignore(event)
        return WsOutput(bytes(out), tuple(messages), False, tuple(events))

    def _refusal(self, request: Request) -> tuple[int, str] | None:
        if SUBPROTOCOL not in request.subprotocols:
            return 400, "ws_no_sip_subprotocol"
        if self.origins:
            origin = next((value for name, value in request.extra_headers if name.lower() == b"origin"), None)
            if origin is None or origin.decode("latin-1").lower().rstrip("/") not in self.origins:
                return 403, "ws_origin_refused"
        return None

    def _close(self, code: int, reason: str, event: str) -> WsOutput:
        self.closed = True
        try:
            data = self._ws.send(CloseConnection(code=code, reason=reason))
        except LocalProtocolError:
            data = b""
        return WsOutput(data, close=True, events=(event,))


def _ignore(event: Event) -> None:
    """Events with nothing to do here (wsproto's others are not produced for
    a server without extensions)."""
