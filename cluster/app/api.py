"""The routing API: how operators write the cluster's behaviour in Python.

An application is a module-level object (named in config as
``module:object``) built from plain functions::

    from cluster.app import Application

    application = Application("example")

    @application.request("INVITE")
    def invite(call):
        if not call.is_local(call.request.uri):
            return call.reply(404)
        contacts = call.lookup(call.request.uri)
        if not contacts:
            return call.reply(480)
        return call.proxy(contacts, parallel=True, timeout=30)

    @application.failure
    def failed(call, best):
        forward = call.settings().get("forward_busy")
        if best.status in (486, 600) and forward:
            return call.proxy([forward])

Handlers are synchronous decision functions: they read the request, the
location cache and per-user settings (all local memory, no I/O) and return a
*decision* — reply, proxy, redirect, challenge or register. The worker
carries the decision out (transactions, etcd writes, timers), so a slow
handler cannot stall anything but itself and handlers stay easy to test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from cluster.proxy.flows import Flow
from cluster.proxy.identity import assert_identity
from cluster.sip import NameAddress, Request, Response, SipURI, URI, parse_uri

# -- decisions --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    reason: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class Target:
    """Where one branch goes: the Request-URI, and optionally the route to it
    (RFC 3327 Path) and the edge connection a registered UA is reachable on."""

    uri: URI
    path: tuple[str, ...] = ()
    edge: str | None = None
    conn: int | None = None
    transport: str | None = None
    received: tuple[str, int] | None = None
    q: float | None = None
    flow: Flow | None = None
    """The RFC 5626 flow the contact registered over (``cluster.proxy.flows``):
    the branch goes over it, through the edge that holds it."""
    alternates: tuple[Target, ...] = ()
    """The same UA instance's other flows, most recent first (RFC 5626 §5.3:
    one flow per instance at a time; the next when one fails with 430)."""


@dataclass(frozen=True, slots=True)
class SetTarget:
    """A destination set by name (``sipcluster dispatcher add``): the worker
    orders the members that are up by the set's policy; the first gets the
    branch and the next take over, in the same call, on a 503, a timeout or
    a transport error. A set with no member up (or no such set) adds no
    branch; with nothing else to try the request is answered 503."""

    name: str


@dataclass(frozen=True, slots=True)
class Proxy:
    targets: tuple[Target | SetTarget, ...]
    parallel: bool = True
    timeout: float | None = None
    record_route: bool = True


@dataclass(frozen=True, slots=True)
class Challenge:
    realm: str
    proxy: bool = False
    stale: bool = False


@dataclass(frozen=True, slots=True)
class Register:
    """Process the REGISTER in the registrar (RFC 3261 §10.3)."""


Decision = Reply | Proxy | Challenge | Register


@dataclass(frozen=True, slots=True)
class AuthOutcome:
    username: str | None
    stale: bool = False
    reason: str = ""
    banned: bool = False
    """The user is banned for password guessing (``worker.auth_fail_limit``):
    no password is checked until the ban ends; refuse, do not challenge."""

    @property
    def ok(self) -> bool:
        return self.username is not None


# -- what a handler sees ----------------------------------------------------------------


class Call:
    """One request in the hands of the application.

    ``services`` is provided by the worker: the location cache, user
    directory cache, digest verification, local domains and trusted networks.
    """

    __slots__ = ("request", "source", "services", "shard", "handler", "state", "routed", "identity")

    def __init__(self, request: Request, source, services, shard: str, handler: str = "",
                 routed: tuple = ()) -> None:
        self.request = request
        self.source = source
        self.services = services
        self.shard = shard
        self.handler = handler
        self.state: dict = {}
        self.routed = routed
        """Our own Route entries the request arrived with (removed, §16.4)."""
        self.identity: str | None = None
        """The AOR asserted for the sender (``assert_identity``), if any."""

    # decisions
    def reply(self, status: int, reason: str | None = None, *,
              headers: Iterable[tuple[str, str]] = (), body: bytes = b"") -> Reply:
        return Reply(status, reason, tuple(headers), body)

    def proxy(self, targets: Iterable[object], *, parallel: bool = True,
              timeout: float | None = None, record_route: bool = True) -> Proxy:
        resolved = tuple(_target(t) for t in targets)
        if not parallel:
            resolved = tuple(sorted(resolved, key=_priority))
        return Proxy(resolved, parallel, timeout, record_route)

    def destination_set(self, name: str) -> SetTarget:
        """A destination set as a proxy target: ``call.proxy([call.destination_set("carriers")])``."""
        return SetTarget(name)

    def redirect(self, contacts: Iterable[object], status: int = 302) -> Reply:
        """3xx with the contacts (RFC 3261 §8.3, §21.3)."""
        values = []
        for contact in contacts:
            target = _target(contact)
            if isinstance(target, SetTarget):
                raise TypeError("a destination set cannot be a redirect contact")
            q = f";q={target.q}" if target.q is not None else ""
            values.append(("Contact", f"<{target.uri}>{q}"))
        return Reply(status, None, tuple(values))

    def challenge(self, realm: str | None = None, *, proxy: bool = False, stale: bool = False) -> Challenge:
        return Challenge(realm or self.default_realm(), proxy, stale)

    def register(self) -> Register:
        return Register()

    def refuse(self, status: int, reason: str, *, event: str, detail: str = "") -> Reply:
        """A refusal counted as node event ``event`` and logged with its source."""
        self.services.note(event, self.request, self.source.host, detail or reason)
        return Reply(status, reason)

    def assert_identity(self, aor: str) -> None:
        """Assert ``aor`` as the sender's identity to the next hops: a
        P-Asserted-Identity (RFC 3325 §5), kept only towards trusted hops
        when the user asked for privacy. It also scopes the dialog token:
        a dialog of an identified sender may be routed anywhere."""
        assert_identity(self.request, aor)
        self.identity = aor

    # services
    def authenticate(self, realm: str | None = None, *, proxy: bool = False) -> AuthOutcome:
        return self.services.authenticate(self.request, realm or self.default_realm(), proxy=proxy,
                                          source=self.source.host)

    def lookup(self, aor: object) -> list[Target]:
        uri = parse_uri(aor) if isinstance(aor, str) else aor
        if isinstance(uri, NameAddress):
            uri = uri.uri
        return self.services.lookup(uri)

    def settings(self, aor: object | None = None) -> dict:
        uri = aor if aor is not None else self.request.uri
        uri = parse_uri(uri) if isinstance(uri, str) else uri
        return self.services.user_settings(uri)

    def is_local(self, uri: object) -> bool:
        uri = parse_uri(uri) if isinstance(uri, str) else uri
        return self.services.is_local_domain(uri)

    @property
    def from_trusted(self) -> bool:
        return self.services.is_trusted(self.source.host)

    @property
    def in_our_dialog(self) -> bool:
        """Whether the request came through a Route the cluster record-routed
        with a valid dialog token for its Call-ID and tags: a dialog this
        cluster (any shard of it) set up and authorised."""
        return self.services.tokens.authorises(self.request, self.routed, self.source.host)

    def default_realm(self) -> str:
        to = self.request.to.uri
        from_ = self.request.from_.uri
        if self.request.method == "REGISTER" and isinstance(to, SipURI):
            return to.host.lower()
        if isinstance(from_, SipURI):
            return from_.host.lower()
        return self.services.domains[0]


def _priority(target: Target | SetTarget) -> float:
    q = target.q if isinstance(target, Target) else None
    return -(q if q is not None else 1.0)


def _target(value: object) -> Target | SetTarget:
    if isinstance(value, (Target, SetTarget)):
        return value
    if isinstance(value, str):
        return Target(parse_uri(value))
    if isinstance(value, NameAddress):
        return Target(value.uri, q=value.q)
    if isinstance(value, URI):
        return Target(value)
    raise TypeError(f"cannot proxy to {value!r}")


Handler = Callable[[Call], Decision | None]
FailureHook = Callable[[Call, Response], Decision | None]
ResponseHook = Callable[[Call, Response], None]


@dataclass
class Application:
    """Handlers per request method, plus failure and response hooks."""

    name: str = "application"
    handlers: dict[str, Handler] = field(default_factory=dict)
    on_failure: FailureHook | None = None
    on_response: ResponseHook | None = None
    redirect_domains: set[str] = field(default_factory=set)

    def request(self, *methods: str) -> Callable[[Handler], Handler]:
        """Register a handler for ``methods`` ("*" for any other method)."""
        def register(fn: Handler) -> Handler:
            for method in methods or ("*",):
                self.handlers[method.upper() if method != "*" else "*"] = fn
            return fn
        return register

    def failure(self, fn: FailureHook) -> FailureHook:
        """Called with the best final response when every branch failed; may
        return a new decision (e.g. forward on busy / no answer)."""
        self.on_failure = fn
        return fn

    def response(self, fn: ResponseHook) -> ResponseHook:
        """Called for every response before it goes upstream (may edit it)."""
        self.on_response = fn
        return fn

    def handler_for(self, method: str) -> tuple[str, Handler | None]:
        handler = self.handlers.get(method)
        if handler is not None:
            return method, handler
        return "*", self.handlers.get("*")
