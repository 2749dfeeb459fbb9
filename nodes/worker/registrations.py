"""REGISTER's etcd work, run as a task of the worker (RFC 3261 §10.3).

The transaction user decides that a request is a registration; this runs the
registrar's read-decide-write over the location store (``cluster.registrar``)
off the message path and hands the response to ``answer`` (the worker gives it
back to the transaction user) while the registrar's span is current, so the
answer's send is traced as a child of the registration. A bug or a store outage costs this REGISTER its answer
(500, 503 without the dependency's error text), never the worker.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from contextlib import nullcontext

from cluster.observability.tracing import Tracing
from cluster.proxy.flows import FlowTokens, flow_path, registration_flow
from cluster.registrar import Outcome, Source, failure, register
from cluster.registrar.rules import RegistrarPolicy
from cluster.registrar.store import LocationStore
from cluster.sip import Request, Response
from cluster.sip.transaction.peer import Peer
from cluster.tu import route_of
from cluster.tu.flowroutes import arrival_flow

log = logging.getLogger("sipcluster.worker")


class Registrations:
    def __init__(self, store: LocationStore, policy: RegistrarPolicy, *, stats: Counter[str],
                 tracing: Tracing | None, bug: Callable[[str, str | None], None],
                 flows: FlowTokens | None = None) -> None:
        """``bug`` logs and counts a bug met while registering (the worker's
        own); ``flows`` makes the flow tokens of RFC 5626 flows (none: no
        registration is bound to its flow)."""
        self.flows = flows
        self.store = store
        self.policy = policy
        self.stats = stats
        self.tracing = tracing
        self.bug = bug

    async def register(self, request: Request, source: Peer,
                       answer: Callable[[Response], None]) -> None:
        route = route_of(source)
        tracing = self.tracing
        scope = tracing.child("registrar.register", {"sip.aor": str(request.to.uri)}) \
            if tracing is not None else nullcontext()
        with scope as span:
            try:
                result = await register(
                    self.store, request, now=time.time(), policy=self.policy,
                    source=Source(source.transport, source.host, source.port),
                    edge=route.edge if route else None, conn=route.conn if route else None,
                    flow_path=self._flow_path(request, source))
            except Exception:  # noqa: BLE001
                # This task runs in the worker's nursery: an exception escaping
                # it would stop the worker. A registrar bug costs this
                # REGISTER a 500, as in the message path.
                self.bug("registration failed", request.call_id)
                result = failure(Outcome.INTERNAL_ERROR, policy=self.policy)
            if result.outcome is Outcome.STORE_UNAVAILABLE:
                log.warning("REGISTER answered 503: %s", result.detail)
            self.stats[f"register_{result.status}"] += 1
            if span is not None:
                span.set_attribute("sip.response.status_code", result.status)
            answer(result.response(request))

    def _flow_path(self, request: Request, source: Peer) -> str | None:
        """Our Path entry naming the flow a REGISTER came over, if its
        contacts are to be reached over it (``registration_flow``)."""
        arrival = arrival_flow(source)
        flow = registration_flow(request, arrival) if arrival is not None else None
        if flow is None or self.flows is None:
            return None
        route = route_of(source)
        advertise = (route.advertise if route is not None else None) or f"{flow.local[0]}:{flow.local[1]}"
        return flow_path(advertise, self.flows.make(flow), flow.transport)
