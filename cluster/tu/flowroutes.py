"""Where the transaction user sends a message over an RFC 5626 flow
(``cluster.proxy.flows``): the flow a message came over, and the peer and
edge route of a flow to send on. Sans-IO."""

from __future__ import annotations

from cluster.proxy.flows import Flow, FlowTokens, ForgedFlowToken
from cluster.sip import SipURI
from cluster.sip.transaction.peer import Peer

from .outputs import NO_LOCAL, EdgeRoute, route_of

__all__ = ["arrival_flow", "flow_peer", "forged_flow"]


def flow_peer(flow: Flow, contact: tuple[str, int] | None, advertise: str) -> Peer:
    """Where a request over ``flow`` goes: a strict flow's connection through
    its edge, and nowhere else (RFC 5626 §5.3); a plain connection while it
    is open, else ``contact`` (RFC 3261 §18.2.2), through any edge once the
    flow's has gone."""
    if flow.strict:
        return Peer(flow.transport, flow.peer[0], flow.peer[1],
                    EdgeRoute(flow.edge, flow.conn, flow.local, advertise, flow=True))
    host, port = contact or flow.peer
    return Peer(flow.transport, host, port, EdgeRoute(flow.edge, flow.conn, NO_LOCAL, advertise))


def arrival_flow(source: Peer) -> Flow | None:
    """The flow a message came over, as the edge described it."""
    route = route_of(source)
    if route is None or not route.edge:
        return None
    return Flow(route.edge, source.transport, (source.host, source.port), route.local, route.conn)


def forged_flow(routed: tuple[SipURI, ...], flows: FlowTokens) -> bool:
    """Whether one of our removed Route entries carries a flow token that
    does not verify."""
    try:
        for uri in routed:
            flows.of_uri(uri)
    except ForgedFlowToken:
        return True
    return False


