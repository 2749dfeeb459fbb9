"""RFC 5626 flows through a stateless edge, sans-IO: flow tokens and the
decisions that read them.

A client behind a NAT, or on a WebSocket, can only be reached over the
connection (or UDP 5-tuple) it opened, through the edge that holds it. An
edge keeps no state about it, so the cluster writes the flow into the
addresses it hands out (§5.2): a *flow token* in the first Path entry of the
registration and in the Record-Route entry that faces the client. The token
names the edge, the transport, the client's address, the edge's local
address and the edge's connection id, with an HMAC under a key every worker
holds (a cluster secret, ``cluster.coordination.secrets``), so any shard
reads a token another one wrote and nobody outside can make one up: a
forged or altered token is refused with 403.

A *strict* flow (an outbound registration with ``reg-id``, §6, or a
WebSocket, which cannot be dialled back) is used and nothing else: when its
connection is gone the edge answers 430 Flow Failed (§5.3, §11.5) and the
authoritative proxy tries the instance's next flow. A non-strict flow (a
plain TCP or TLS registration, RFC 3261 §18.2.2) is reused while open, and
the edge connects to the Contact otherwise.

The token travels in the URI parameter ``sfl`` of our own Path and
Record-Route URIs (§5.2 leaves the encoding to the edge proxy; a parameter
of ours cannot be mistaken for a user part).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from cluster.sip import Request, SipURI

__all__ = [
    "CONNECTION_TRANSPORTS",
    "FLOW_PARAM", "Flow", "FlowTokens", "ForgedFlowToken", "STRICT_TRANSPORTS", "flow_path",
    "dialog_flow", "registration_flow", "route_flow",
]

FLOW_PARAM = "sfl"
"""The URI parameter of our Path and Record-Route URIs that carries a flow token."""
STRICT_TRANSPORTS = frozenset({"WS", "WSS"})
"""Transports a client can only be reached over on the connection it opened
(RFC 7118 §5: a WebSocket client accepts no connections)."""
CONNECTION_TRANSPORTS = frozenset({"TCP", "TLS", "WS", "WSS"})
_LABEL = b"sipcluster rfc5626 flow token v1"
_MAC_BYTES = 12  # 96 bits of HMAC-SHA256: beyond guessing for a flow's lifetime
_VERSION = "1"


class ForgedFlowToken(ValueError):
    """A URI of ours carries a flow token that does not verify (§5.2: the
    edge proxy must refuse it with 403)."""


@dataclass(frozen=True, slots=True)
class Flow:
    """One flow: the edge that holds it, its transport, the client's address
    as the edge sees it, the edge's local address and connection id."""

    edge: str
    transport: str
    peer: tuple[str, int]
    local: tuple[str, int]
    conn: int | None = None
    strict: bool = False
    """Reach the client over this flow or not at all (430 when it is gone)."""

    def same_flow(self, other: Flow) -> bool:
        """The same connection or 5-tuple, whatever the strictness."""
        return (self.edge, self.transport.upper(), self.peer, self.conn) == \
            (other.edge, other.transport.upper(), other.peer, other.conn)


class FlowTokens:
    """Makes and opens flow tokens under one key (derived with a label of
    its own, so a token is never valid as any other kind of cluster HMAC)."""

    __slots__ = ("_mac",)

    def __init__(self, secret: bytes) -> None:
        key = hmac.new(bytes(secret), _LABEL, hashlib.sha256).digest()
        self._mac = hmac.new(key, digestmod=hashlib.sha256)

    def _sign(self, payload: bytes) -> bytes:
        mac = self._mac.copy()
        mac.update(payload)
        return mac.digest()[:_MAC_BYTES]

    def make(self, flow: Flow) -> str:
        fields = (_VERSION, flow.edge, flow.transport.upper(), flow.peer[0], str(flow.peer[1]),
                  flow.local[0], str(flow.local[1]), "" if flow.conn is None else str(flow.conn),
                  "s" if flow.strict else "")
        if any("\n" in f for f in fields):
            raise ValueError("a flow field contains a line break")
        payload = "\n".join(fields).encode("utf-8", "surrogateescape")
        return base64.urlsafe_b64encode(self._sign(payload) + payload).rstrip(b"=").decode("ascii")

    def open(self, token: str) -> Flow:
        """The flow ``token`` names; ForgedFlowToken when it does not verify
        or cannot be read."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise ForgedFlowToken("flow token is not base64") from None
        mac, payload = raw[:_MAC_BYTES], raw[_MAC_BYTES:]
        if len(mac) < _MAC_BYTES or not hmac.compare_digest(mac, self._sign(payload)):
            raise ForgedFlowToken("flow token does not verify")
        fields = payload.decode("utf-8", "surrogateescape").split("\n")
        # A valid MAC means we wrote it; a shape we do not know is a token
        # of a later version, which this code cannot follow either.
        if len(fields) != 9 or fields[0] != _VERSION:
            raise ForgedFlowToken("flow token of an unknown version")
        _, edge, transport, peer_host, peer_port, local_host, local_port, conn, strict = fields
        try:
            return Flow(edge, transport, (peer_host, int(peer_port)), (local_host, int(local_port)),
                        int(conn) if conn else None, strict == "s")
        except ValueError:
            raise ForgedFlowToken("flow token with a malformed port") from None

    def of_uri(self, uri: object) -> Flow | None:
        """The flow in a URI's ``sfl`` parameter, None when it has none;
        ForgedFlowToken when it has one that does not verify."""
        if not isinstance(uri, SipURI):
            return None
        token = uri.param(FLOW_PARAM)
        if token is None:
            return None
        if not token.isascii():
            raise ForgedFlowToken("flow token is not ASCII")
        return self.open(token)


def flow_path(advertise: str, token: str, transport: str) -> str:
    """Our Path entry for a registration over a flow (RFC 3327, RFC 5626
    §5.2): the edge's advertised address, the token and ``ob`` (this hop
    supports outbound)."""
    # RFC 7118 §5.2: WSS is written transport=ws.
    params = "" if transport.upper() == "UDP" else f";transport={'ws' if transport.upper() == 'WSS' else transport.lower()}"
    return f"<sip:{advertise}{params};{FLOW_PARAM}={token};lr;ob>"


def registration_flow(request: Request, arrival: Flow) -> Flow | None:
    """The flow a REGISTER that came over ``arrival`` binds its contacts to,
    or None for a plain UDP registration (reached at its Contact).

    RFC 5626 §6: a Contact with ``+sip.instance`` and ``reg-id`` from a UA
    that supports outbound asks for outbound semantics, which makes the flow
    strict, as a WebSocket always is. Any other connection is reused while
    it is open (RFC 3261 §18.2.2)."""
    transport = arrival.transport.upper()
    outbound = "outbound" in request.supported and any(
        c.instance is not None and c.reg_id is not None for c in request.contacts)
    if not outbound and transport not in CONNECTION_TRANSPORTS:
        return None
    return Flow(arrival.edge, transport, arrival.peer, arrival.local, arrival.conn,
                strict=outbound or transport in STRICT_TRANSPORTS)


def dialog_flow(request: Request, arrival: Flow) -> Flow | None:
    """The flow the sender of a dialog-forming request is reached back over
    (our Record-Route entry facing it carries its token), or None: a
    connection (strict for a WebSocket), or UDP when the Contact has ``ob``
    (RFC 5626 §5.1: the UA registered with outbound; strict then too)."""
    transport = arrival.transport.upper()
    ob = any(isinstance(c.uri, SipURI) and c.uri.has_param("ob") for c in request.contacts)
    if not ob and transport not in CONNECTION_TRANSPORTS:
        return None
    return Flow(arrival.edge, transport, arrival.peer, arrival.local, arrival.conn,
                strict=ob or transport in STRICT_TRANSPORTS)


def route_flow(routed: Iterable[SipURI], tokens: FlowTokens, arrival: Flow | None) -> Flow | None:
    """RFC 5626 §5.3: the flow to send a request over, from the URIs of ours
    it was routed through (``preprocess_routes``): the first flow token that
    does not name the flow the request arrived on. A request from the
    client itself carries its own flow's token and goes on by its route
    set. ForgedFlowToken when a token does not verify."""
    for uri in routed:
        flow = tokens.of_uri(uri)
        if flow is None:
            continue
        if arrival is not None and flow.same_flow(arrival):
            continue
        return flow
    return None
