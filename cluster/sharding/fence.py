"""Whether a worker shard may act on an inbound message (DESIGN §4, issue 18.6/18.7).

etcd decides who owns a Call-ID; a worker only knows what it last heard. Two
cases make what it heard unreliable:

* **It was stalled** (SIGSTOP, a frozen VM, a long GC pause). Messages the
  edges sent before they noticed sit in its link buffer; meanwhile its lease
  may have expired and the ring given their Call-IDs to another shard, which
  answered the callers' retransmissions. Answering the queued ones now sends
  stray 100s and 200s for transactions another shard completed. A message
  older than the lease TTL (by the edge's ``ts_ns``) is therefore ``STALE``
  unless the lease is confirmed alive, was not granted anew since the
  message arrived (a lease lost and regained in between), and, for a
  request, the ring still names this shard.
* **It is cut from etcd** but not from the edges: once its lease may have
  expired (no keep-alive confirmed for a TTL, ``EtcdMembership.lease_alive``)
  it cannot know whether its Call-IDs moved, so it takes no new request
  (``FENCED``) from an edge whose own view of etcd is current: such an edge
  routes to the shard that took over as soon as etcd drops this one.
  Requests from an edge that has lost etcd as well are still served: then
  etcd is out of everyone's reach (an etcd stall or outage), nobody can have
  been given the Call-IDs, and refusing would stop the whole cluster. A
  partition that cuts an edge and a worker from etcd together, but not the
  rest, is the one case this cannot tell apart (ops/guide/operations.md).

Responses are always admitted while fresh: they belong to client
transactions this shard holds. Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

from .ring import EmptyRing, Ring

__all__ = ["ADMIT", "FENCED", "STALE", "admission"]

ADMIT = "admit"
STALE = "stale"
FENCED = "fenced"


def admission(*, shard: str, call_id: bytes, request: bool, age: float, max_age: float,
              lease_alive: bool, edge_current: bool, ring: Ring | None,
              lease_newer: bool = False) -> str:
    """``ADMIT``, ``STALE`` (drop: queued through a stall) or ``FENCED``
    (refuse: our lease may be gone). ``age`` is seconds since the edge
    received the message; ``max_age`` the lease TTL; ``lease_newer``,
    whether our current lease was granted after the message arrived."""
    if age > max_age and (not lease_alive or lease_newer
                          or (request and not _owns(ring, shard, call_id))):
        return STALE
    if request and not lease_alive and edge_current:
        return FENCED
    return ADMIT


def _owns(ring: Ring | None, shard: str, call_id: bytes) -> bool:
    if ring is None:
        return False
    try:
        return ring.owner(call_id) == shard
    except EmptyRing:
        return False
