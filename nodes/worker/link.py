"""The worker's links to the edges: reading what they forward, and sending them what it sends.

``LinkReader`` handles the inbound batches frame by frame, yielding to the
other tasks now and then (the lease keeper, the timers) and sending what a
long batch produced before the batch ends.

Only edges are linked to: a worker reaches another shard's transactions
through an edge, never directly. An edge that reads version-2 envelopes
(``cluster.link``) gets, while the worker handles a link batch or a timer run
(``framed``), everything addressed to it as one ZeroMQ message instead of one
per SIP message. A message the link refuses is counted as dropped and its
client transaction, if any, gets a transport error (RFC 3261 §17.1.4)
through the ``failed`` callback the caller hands to ``framed`` or ``flush``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import trio

from cluster.link import Envelope, FrameQueue, Inbox, LinkError, Outbox, pack, pack_v2, unpack_frame
from cluster.sharding.membership import Member
from cluster.sip.transaction.actions import TransactionKey
from cluster.tu import EdgeRoute
from cluster.tu.outputs import NO_LOCAL

Failed = Callable[[TransactionKey], None]
"""Called with the client transaction key of a message that could not go."""

FRAME_EVERY = 16
"""Inbound frames handled before the frames they produced are sent, at most."""
YIELD_EVERY = 256
"""Inbound messages handled before the link loop lets other tasks run."""


class EdgeLinks:
    def __init__(self, outbox: Outbox, node_id: str, stats: Counter[str]) -> None:
        self.outbox = outbox
        self.node_id = node_id
        self.stats = stats
        self.edges: dict[str, str] = {}
        """Edge id → link endpoint, for the edges linked to."""
        self.array_edges: set[str] = set()
        """Edges that read version-2 envelopes and frames (cluster.link)."""
        self._frames = FrameQueue()
        self._framing = False

    def follow(self, edges: Iterable[Member]) -> dict[str, dict[str, str]]:
        """Link to the edges of a new membership view; returns each linked
        edge's advertised address per SIP transport (``Member.sip``)."""
        # An edge without a published key runs a release with plaintext
        # links: not linked to.
        members = [m for m in edges if m.curve_key]
        for member in members:
            self.outbox.connect(member.link, member.curve_key.encode())
        self.edges = {m.id: m.link for m in members}
        self.array_edges = {m.id for m in members if m.link_version >= 2}
        return {m.id: dict(m.sip) for m in members}

    def edge_for(self, route: EdgeRoute | None) -> str:
        """The edge a send along ``route`` goes through: the one it names or,
        for a route the TU made (no local address) that names no edge or
        one that left, any linked edge, which reaches the peer as well;
        "" (counted as unknown by ``send``) when there is none."""
        edge = (route.edge if route is not None else None) or ""
        if edge not in self.edges and (route is None or route.local == NO_LOCAL):
            edge = next(iter(self.edges), None) or ""
        return edge

    def send(self, edge: str, transport: str, peer: tuple[str, int], local: tuple[str, int],
             conn: int | None, data: bytes, origin_ns: int = 0, trace: str | None = None,
             key: TransactionKey | None = None, flow: bool = False) -> bool:
        """Hand one message to ``edge``. False when it cannot go now (the
        caller reports a transport error). While framing, a message for an
        edge that reads frames is queued and True returned: a failure then
        surfaces in ``flush``, which reports ``key``. ``origin_ns`` is the
        ``ts_ns`` of the inbound envelope being handled, so the edge measures
        edge → worker → edge on its own clock. ``flow``: a strict RFC 5626
        flow, written on connection ``conn`` only (``Envelope.flow``)."""
        endpoint = self.edges.get(edge)
        if endpoint is None:
            self.stats["drop_unknown_edge"] += 1
            return False
        env = Envelope("out", edge, transport, peer, local, data, conn, origin_ns, trace,
                       sender=self.node_id, flow=flow)
        if edge in self.array_edges:
            if self._framing:
                self._frames.add(endpoint, env, key)
                return True
            frame = pack_v2(env)
        else:
            frame = pack(env)
        if self.outbox.send(endpoint, frame):
            self.stats["sent"] += 1
            return True
        self.stats["drop_edge_link_down"] += 1
        return False

    @contextmanager
    def framed(self, failed: Failed) -> Iterator[None]:
        """Queue what goes to frame-reading edges meanwhile; send it at the end."""
        self._framing = True
        try:
            yield
        finally:
            self._framing = False
            self.flush(failed)

    def flush(self, failed: Failed) -> None:
        """Send what framing queued: one frame per edge. What ``failed`` sends
        in turn (a transport error's own messages) is sent here too."""
        while self._frames:
            for endpoint, frame, keys in self._frames.take():
                if self.outbox.send(endpoint, frame):
                    self.stats["sent"] += len(keys)
                    self.stats["sent_frames"] += 1
                    continue
                self.stats["drop_edge_link_down"] += len(keys)
                for key in keys:
                    if key is not None:
                        failed(key)


class LinkReader:
    def __init__(self, inbox: Inbox, links: EdgeLinks, stats: Counter[str], *,
                 receive: Callable[[Envelope, float], None], failed: Callable[[float], Failed],
                 done: Callable[[], None]) -> None:
        """``receive`` handles one ``in`` envelope at ``now``; ``failed(now)``
        reports a message the links refused; ``done`` runs after each stretch
        of a batch (the transaction layer's housekeeping, the timer's kick)."""
        self.inbox = inbox
        self.links = links
        self.stats = stats
        self.receive = receive
        self.failed = failed
        self.done = done
        self.batch = 0
        """Frames drained in the last wakeup (a queue depth metric)."""

    async def run(self) -> None:
        while True:
            batch = await self.inbox.receive_batch()
            self.batch = len(batch)
            start = 0
            while start < len(batch):
                if start:
                    # Frames carry many messages each: under overload a batch
                    # is seconds of work, and the lease keeper and the timers
                    # must still run within it (a worker whose lease lapses
                    # leaves the ring exactly when it is busiest).
                    await trio.lowlevel.checkpoint()
                now = trio.current_time()
                with self.links.framed(self.failed(now)):
                    start = self.handle(batch, start, now)
                self.done()

    def handle(self, batch: list[bytes], start: int, now: float) -> int:
        """Handle ``batch`` from ``start`` until YIELD_EVERY messages are done;
        returns where to go on from."""
        handled = 0
        for n in range(start, len(batch)):
            try:
                envelopes = unpack_frame(batch[n])
            except LinkError:
                self.stats["link_bad_envelope"] += 1
                continue
            for env in envelopes:
                if env.kind == "in":
                    self.receive(env, now)
                else:
                    self.stats["link_unexpected_kind"] += 1
            handled += len(envelopes)
            if handled >= YIELD_EVERY:
                return n + 1
            if (n + 1 - start) % FRAME_EVERY == 0:
                # A long batch does not hold its first answers back.
                self.links.flush(self.failed(now))
        return len(batch)
