"""The transaction user's state and the helpers every part of it uses, sans-IO.

``TransactionUser`` (``core``) is built in layers, each a module of one
concern: this state; forwarding with its response contexts, DNS location
and failover (``forwarding``); CANCEL, ACK and stray responses, which
follow what forwarding did (``cancelling``); and the inputs, request checks
and application decisions on top (``core``). What the services and the
observer offer the TU is defined here too.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable
from typing import Protocol

from cluster.app.api import Application, Call, Challenge, Handler, Target
from cluster.dispatch import Dispatcher
from cluster.dns.blocklist import Blocklist
from cluster.dns.rfc3263 import Target as LocateTarget
from cluster.proxy.context import Branch, ResponseContext
from cluster.proxy.flows import FlowTokens
from cluster.proxy.routing import DialogTokens, LocalAddresses, resolve_localhost
from cluster.sip import Request, Response, SipURI, make_response
from cluster.sip.transaction.actions import Action, Send, TransactionKey
from cluster.sip.transaction.layer import TransactionLayer

from .locating import Located, Locating, LogLimit
from .outputs import EdgeRoute, Resolve, StartRegistration

Output = Send | StartRegistration | Resolve
Resolver = Callable[[str], str | None]
Headers = tuple[tuple[str, str], ...]


class TUServices(Protocol):
    """What the TU asks of the worker's services (``nodes.worker.services``):
    answers from memory, no I/O."""

    @property
    def local(self) -> LocalAddresses: ...

    @property
    def tokens(self) -> DialogTokens: ...

    @property
    def flows(self) -> FlowTokens: ...

    @property
    def dispatcher(self) -> Dispatcher | None: ...

    def is_trusted(self, host: str) -> bool: ...

    def learn_advertise(self, advertise: str | None) -> None: ...

    def learn_edges(self, addresses: dict[str, dict[str, str]]) -> None: ...

    def advertised(self, edge: str | None, transport: str) -> str | None: ...

    def challenge(self, request: Request, decision: Challenge, source: str = "") -> Response: ...

    def note(self, event: str, request: Request, source: str, detail: str) -> None: ...


class TUObserver:
    """Hooks for observability, passed at construction (nothing patches the TU).
    ``handler`` may wrap the application's handler for one request (a tracing
    span around the routing decision); the default returns it unchanged."""

    def handler(self, key: str, handler: Handler, call: Call) -> Handler:
        return handler


class TUBase:
    """The state of a transaction user (see ``TransactionUser`` for the
    arguments) and what every layer of it calls: the transaction layer's
    actions (``_perform``, defined by ``core``), responses, DNS requests and
    the address we advertise."""

    def __init__(self, application: Application, transactions: TransactionLayer,
                 services: TUServices, *, shard: str, salt: str = "",
                 stats: Counter[str] | None = None, resolve: Resolver = resolve_localhost,
                 observer: TUObserver | None = None, blocklist: Blocklist | None = None,
                 record_route: str | None = None) -> None:
        self.application = application
        self.cluster_route = record_route
        if record_route:
            # A Route naming the cluster is ours (§16.4), whichever edge it reaches.
            services.learn_advertise(record_route)
        self.transactions = transactions
        self.services = services
        self.shard = shard
        self.salt = salt
        self.stats: Counter[str] = stats if stats is not None else Counter()
        self.resolve = resolve
        self.observer = observer
        self.dispatcher = services.dispatcher
        """Destination sets (``SetTarget``) and their probes, when the worker follows them."""
        self.probes: dict[TransactionKey, tuple[tuple[str, str], int]] = {}  # client key -> (member, probe)
        self.blocklist = blocklist if blocklist is not None else Blocklist(60.0)
        self.locating = Locating(self.blocklist, self.stats)
        self._unroutable_log = LogLimit(1.0)
        self.contexts: dict[TransactionKey, ResponseContext] = {}  # server key -> context
        self.branches: dict[TransactionKey, tuple[ResponseContext, Branch]] = {}  # client key -> (ctx, branch)
        self.calls: dict[int, Call] = {}
        self.targets: dict[int, dict[int, Target]] = {}  # id(ctx) -> branch index -> target
        self.record_route: dict[int, bool] = {}
        self._deadlines: list[tuple[float, int, ResponseContext]] = []
        self._seq = itertools.count()
        self._out: list[Output] = []
        self._link_refused: TransactionKey | None = None
        """The client transaction whose Send the cluster's own link to an edge
        refused, while its transport error is handled (``link_refused``)."""

    def _perform(self, actions: list[Action], now: float) -> None:
        raise NotImplementedError  # core.TransactionUser: the transaction layer's events

    def check(self, request: Request) -> tuple[int, Headers, tuple[SipURI, ...]]:
        raise NotImplementedError  # core.TransactionUser: §16.3 request validation

    def _respond(self, response: Response, now: float) -> None:
        self._perform(self.transactions.send_response(response, now), now)

    def _reply(self, request: Request, status: int, now: float, reason: str | None = None,
               headers: Headers = (), body: bytes = b"") -> None:
        self._respond(make_response(request, status, reason, headers=headers, body=body), now)

    def _locate(self, target: LocateTarget, seed: int, then: Located) -> None:
        self._out.append(self.locating.ask(target, seed, then))

    def _advertise(self, came: EdgeRoute | None) -> str:
        """The address for our Via and Record-Route: the one the request's
        edge advertises, else the first one we know."""
        if came is not None and came.advertise:
            return came.advertise
        for host, port in sorted(self.services.local.addresses):
            return f"{host}:{port}" if port else host
        return "127.0.0.1:5060"

