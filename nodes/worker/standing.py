"""This shard's standing in the cluster: its membership, the view it follows, ready or draining.

The membership is a key under a lease in etcd (``cluster.coordination``);
each new view (DESIGN §4) is handed to ``on_view`` (the worker links to the
view's edges) and gives the ring this shard owns a share of. A shard is ready
when it is in that ring and not draining; draining takes it out of the ring
at once and keeps its membership until its calls are done.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Callable

import trio

from cluster.coordination import EtcdMembership
from cluster.link import Envelope
from cluster.sharding.fence import ADMIT, admission
from cluster.sharding.membership import MembershipView
from cluster.sharding.ring import Ring
from cluster.sip import ParseError, extract_call_id

log = logging.getLogger("sipcluster.worker")


class ShardStanding:
    def __init__(self, node_id: str, on_view: Callable[[MembershipView], None], *, drain_timeout: float) -> None:
        self.node_id = node_id
        self.on_view = on_view
        self.drain_timeout = drain_timeout
        self.membership: EtcdMembership | None = None
        """Set by ``run``, once registered."""
        self.view: MembershipView | None = None
        self.draining = False
        self._ring: tuple[MembershipView | None, Ring | None] = (None, None)

    async def run(self, membership: EtcdMembership, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Register ``membership`` (started once it is), then follow its views."""
        async with trio.open_nursery() as nursery:
            await nursery.start(membership.run)
            self.membership = membership
            task_status.started()
            async for view in membership.views():
                self.view = view
                self.on_view(view)

    def readiness(self) -> tuple[bool, str]:
        """(ready, why): in the ring (registered, following the membership,
        etcd reachable) and not draining."""
        membership = self.membership
        if membership is None:
            return False, "starting"
        if self.draining:
            return False, "draining"
        if not membership.ready:
            return False, "etcd unreachable or membership not current"
        ring = self.ring()
        if ring is None or self.node_id not in ring.members:
            return False, "not in the ring yet"
        return True, "ready"

    def ring(self) -> Ring | None:
        """The current view's ring, built once per view."""
        view = self.view
        if view is None:
            return None
        if self._ring[0] is not view:
            self._ring = (view, view.ring())
        return self._ring[1]

    def admits(self, env: Envelope, stats: Counter[str]) -> bool:
        """Whether to act on ``env`` (``cluster.sharding.fence``): not when it
        queued through a stall longer than the lease and its Call-ID may be
        another shard's now, nor a request while our lease may be gone
        (split brain). What it refuses is dropped and counted
        (``drop_stale``, ``drop_fenced``): the caller's retransmission
        reaches the shard that owns the Call-ID now."""
        membership = self.membership
        if membership is None or membership.member is None:
            return True
        wall = time.time()
        age = wall - env.ts_ns / 1e9 if env.ts_ns else 0.0
        alive = membership.lease_alive(trio.current_time())
        if alive and age <= membership.ttl:
            return True
        try:
            call_id = extract_call_id(env.data)
        except ParseError:
            return True  # the parse boundary answers it
        verdict = admission(shard=self.node_id, call_id=call_id, request=env.data[:8] != b"SIP/2.0 ",
                            age=age, max_age=membership.ttl, lease_alive=alive,
                            edge_current=env.current, ring=self.ring(),
                            lease_newer=membership.lease_granted > wall - age)
        if verdict == ADMIT:
            return True
        stats[f"drop_{verdict}"] += 1
        return False

    def ring_share(self) -> float | None:
        """This shard's share of the Call-ID hash space in the current view."""
        ring = self.ring()
        return None if ring is None else ring.share(self.node_id)

    async def drain(self, in_flight: Callable[[], int]) -> None:
        """Leave the ring, wait (at most ``drain_timeout``) until
        ``in_flight()`` is zero, then leave the membership."""
        self.draining = True
        membership = self.membership
        if membership is not None and membership.member is not None:
            # Out of the ring at once, still a member: edges send new calls
            # elsewhere but keep routing responses for our transactions here
            # (they name this shard in our Via).
            await membership.update(dataclasses.replace(membership.member, draining=True))
        with trio.move_on_after(self.drain_timeout):
            # The TU's count of calls owing a response; nothing signals its zero.
            while in_flight():  # noqa: ASYNC110
                await trio.sleep(0.05)
        log.info("worker drained", extra={"node": self.node_id, "in_flight": in_flight()})
        if membership is not None:
            await membership.leave()
