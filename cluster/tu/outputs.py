"""What the transaction user hands its driver, besides the transaction
layer's ``Send`` actions: typed values, no I/O.

A ``Send`` from the TU names its destination as a ``Peer`` whose context is
an ``EdgeRoute``: the edge (and connection) through which the worker reaches
that peer. The worker, not the TU, knows which edges are linked right now, so
a route naming no edge, or one that left, goes through any linked edge.
"""

from __future__ import annotations

from dataclasses import dataclass

from cluster.dns.rfc3263 import Target as LocateTarget
from cluster.sip import Request
from cluster.sip.transaction.peer import Peer

NO_LOCAL: tuple[str, int] = ("", 0)
"""The local address of a route the TU made: the edge picks its socket."""


@dataclass(frozen=True, slots=True)
class EdgeRoute:
    """How to reach a peer again (the ``Peer.context`` of every peer the
    worker sees): through which edge, connection and local socket, and the
    address that edge advertises (our Via and Record-Route, §16.6)."""

    edge: str | None
    conn: int | None
    local: tuple[str, int]
    advertise: str | None
    flow: bool = False
    """A strict RFC 5626 flow: the edge writes on connection ``conn`` and
    nowhere else, and answers 430 Flow Failed when it is gone."""


@dataclass(frozen=True, slots=True)
class StartRegistration:
    """Process the REGISTER in the registrar (§10.3, an etcd transaction) and
    give its response to ``TransactionUser.respond``."""

    request: Request
    source: Peer


@dataclass(frozen=True, slots=True)
class Resolve:
    """Locate ``target`` by DNS (RFC 3263 §4) and give the ``Location`` to
    ``TransactionUser.resolved(ticket, ...)``; ``seed`` seeds the RFC 2782
    weighted order (``cluster.proxy.failover.seed_for``). The TU holds the
    branch, ACK or CANCEL meanwhile; the runtime always answers, a failure
    included, within its DNS time limit."""

    ticket: int
    target: LocateTarget
    seed: int


def route_of(peer: Peer) -> EdgeRoute | None:
    """The edge route a peer was seen through, None for a peer built elsewhere."""
    context = peer.context
    return context if type(context) is EdgeRoute else None

