"""The worker shard: parses, runs transactions, hands requests to the application.

One trio process per core (DESIGN §5). Inbound envelopes are parsed once; a
request that fails to parse is answered 400 with the reason (RFC 3261
§8.2.6, via ``reject_malformed``) through the edge it came from; a broken
response is dropped and counted. Transaction timers are driven by one task
that sleeps until the layer's next deadline.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import Counter
from dataclasses import dataclass

import trio
import zmq

from cluster.config import Config
from cluster.coordination import EtcdMembership
from cluster.link import Envelope, Inbox, LinkError, Outbox, pack, unpack
from cluster.sharding.membership import WORKER, Member, MembershipView
from cluster.sip import Message, ParseError, Request, Response, parse_message, reject_malformed
from cluster.sip.transaction import TransactionLayer
from cluster.sip.transaction.actions import (
    AckReceived, CancelReceived, RequestReceived, ResponseReceived, Send, StrayResponse,
    TransactionTimeout, TransportError,
)
from cluster.sip.transaction.peer import Peer
from cluster.sip.transaction.timers import TimerConfig

from .minimal import MinimalApplication

log = logging.getLogger("sipcluster.worker")

SERVER = "sipcluster-worker"


@dataclass(frozen=True, slots=True)
class EdgeRoute:
    """How to reach a peer again: through which edge, connection and socket."""

    edge: str
    conn: int | None
    local: tuple[str, int]
    advertise: str | None


class WorkerNode:
    role = WORKER

    def __init__(self, config: Config, application=None) -> None:
        self.config = config
        self.node_id = config.cluster.node_id
        self.context = zmq.Context.instance()
        self.inbox = Inbox(self.context, config.worker.link)
        self.outbox = Outbox(self.context)
        w = config.worker
        self.transactions = TransactionLayer(TimerConfig(t1=w.t1, t2=w.t2, t4=w.t4))
        self.application = application or MinimalApplication(self.node_id)
        self.stats: Counter[str] = Counter()
        self.edges: dict[str, str] = {}
        self.membership: EtcdMembership | None = None
        self.view: MembershipView | None = None
        self.http_url = ""
        self._timer_kick = trio.Event()
        self.draining = False

    def member(self) -> Member:
        return Member(id=self.node_id, role=WORKER, link=self.inbox.endpoint, http=self.http_url,
                      pid=os.getpid(), host=socket.gethostname(), started=time.time())

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self.membership = EtcdMembership.from_config(self.config, self.member())
            await nursery.start(self.membership.run)
            nursery.start_soon(self._follow_membership)
            nursery.start_soon(self._link_loop)
            nursery.start_soon(self._timer_loop)
            log.info("worker ready", extra={"node": self.node_id, "link": self.inbox.endpoint})
            task_status.started()

    async def drain(self) -> None:
        """SIGTERM: leave the ring, finish in-flight transactions (bounded by
        the drain timeout, Timer B/F = 32 s by default), then return."""
        self.draining = True
        if self.membership is not None:
            await self.membership.leave()
        with trio.move_on_after(self.config.worker.drain_timeout):
            while len(self.transactions):
                await trio.sleep(0.05)
        log.info("worker drained", extra={"node": self.node_id,
                                          "left_transactions": len(self.transactions)})

    async def _follow_membership(self) -> None:
        assert self.membership is not None
        async for view in self.membership.views():
            self.view = view
            edges = {m.id: m.link for m in view.edges()}
            for endpoint in edges.values():
                self.outbox.connect(endpoint)
            self.edges = edges

    async def _link_loop(self) -> None:
        while True:
            batch = await self.inbox.receive_batch()
            now = trio.current_time()
            for raw in batch:
                try:
                    env = unpack(raw)
                except LinkError:
                    self.stats["link_bad_envelope"] += 1
                    continue
                if env.kind == "in":
                    self.receive(env, now)
                else:
                    self.stats["link_unexpected_kind"] += 1
            self._kick_timers()

    async def _timer_loop(self) -> None:
        while True:
            deadline = self.transactions.next_deadline()
            with trio.move_on_at(deadline if deadline is not None else float("inf")):
                await self._timer_kick.wait()
            self._timer_kick = trio.Event()
            now = trio.current_time()
            self.perform(self.transactions.handle_timer(now), now)

    def _kick_timers(self) -> None:
        self._timer_kick.set()

    # -- message path --------------------------------------------------------------

    def receive(self, env: Envelope, now: float) -> None:
        try:
            message = parse_message(env.data, datagram=env.transport == "UDP")
        except ParseError as error:
            self.stats["parse_error"] += 1
            answer = reject_malformed(env.data, error, server=SERVER)
            if answer is not None:
                self.stats["answered_400"] += 1
                self.send_raw(env.edge, env.transport, env.peer, env.local, env.conn, answer)
            return
        source = Peer(env.transport, env.peer[0], env.peer[1],
                      EdgeRoute(env.edge, env.conn, env.local, env.advertise))
        self.perform(self.transactions.receive(message, source, now), now)

    def perform(self, actions: list, now: float) -> None:
        for action in actions:
            kind = type(action)
            if kind is Send:
                self._send(action, now)
            elif kind is RequestReceived:
                self._on_request(action, now)
            elif kind is CancelReceived:
                self._on_cancel(action, now)
            elif kind is AckReceived or kind is ResponseReceived or kind is StrayResponse:
                self.stats[f"tu_{kind.__name__}"] += 1
            elif kind is TransactionTimeout or kind is TransportError:
                self.stats[f"tu_{kind.__name__}"] += 1

    def _on_request(self, action: RequestReceived, now: float) -> None:
        try:
            response = self.application.on_request(action.request, action.source)
        except ParseError as error:
            # A field parsed lazily (a lower Via, an Authorization...) was broken.
            response = _error_response(action.request, 400, error.reason)
        except Exception:  # the application must never take the worker down
            log.exception("application failed", extra={"call_id": action.request.call_id})
            self.stats["app_error"] += 1
            response = _error_response(action.request, 500, "application error")
        if response is not None:
            self.perform(self.transactions.send_response(response, now), now)

    def _on_cancel(self, action: CancelReceived, now: float) -> None:
        from cluster.sip import make_response
        # RFC 3261 §9.2: 200 to the CANCEL; 481 when nothing matches.
        status = 200 if action.key is not None else 481
        self.perform(self.transactions.send_response(make_response(action.request, status), now), now)
        if action.key is not None:
            invite = self.transactions.request_of(action.key) if hasattr(self.transactions, "request_of") else None
            if invite is not None:
                self.perform(self.transactions.send_response(make_response(invite, 487), now), now)

    def _send(self, action: Send, now: float) -> None:
        dest = action.destination
        route = dest.context if isinstance(dest.context, EdgeRoute) else None
        if route is None:
            edge = next(iter(self.edges), None)
            if edge is None:
                self.stats["drop_no_edge"] += 1
                return
            route = EdgeRoute(edge, None, ("", 0), None)
        self.send_raw(route.edge, dest.transport, (dest.host, dest.port), route.local, route.conn,
                      action.message.to_bytes())

    def send_raw(self, edge: str, transport: str, peer: tuple[str, int], local: tuple[str, int],
                 conn: int | None, data: bytes) -> None:
        endpoint = self.edges.get(edge)
        if endpoint is None:
            self.stats["drop_unknown_edge"] += 1
            return
        env = Envelope("out", edge, transport, peer, local, data, conn, sender=self.node_id)
        if self.outbox.send(endpoint, pack(env)):
            self.stats["sent"] += 1
        else:
            self.stats["drop_edge_link_down"] += 1

    def status(self) -> dict:
        return {
            "id": self.node_id, "role": WORKER, "pid": os.getpid(),
            "ready": bool(self.membership and self.membership.ready) and not self.draining,
            "draining": self.draining,
            "transactions": len(self.transactions),
            "edges": sorted(self.edges),
            "stats": dict(self.stats),
        }


def _error_response(request: Request, status: int, reason: str) -> Response:
    from cluster.sip import make_response
    response = make_response(request, status)
    response.add("Warning", f'399 {SERVER} "{reason}"')
    return response
