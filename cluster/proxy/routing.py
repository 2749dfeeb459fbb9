"""Request forwarding rules of a stateful proxy (RFC 3261 §16.4–§16.6), sans-IO.

The proxy's identity is the set of addresses it advertises (the edges'
public host:port): a Route or Request-URI naming one of them is "us". Record-
Route always carries an advertised edge address, never a worker (DESIGN §5),
so in-dialog requests reach whichever shard owns the Call-ID now.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeGuard

from cluster.dns.rfc3263 import Target as LocateTarget
from cluster.sip import NameAddress, Request, SipURI, URI, Via
from cluster.sip.grammar import Params
from cluster.sip.memo import bounded_cache
from cluster.sip.transaction.stateless import branch_for

from .flows import FLOW_PARAM

DEFAULT_PORTS = {"UDP": 5060, "TCP": 5060, "TLS": 5061, "WS": 80, "WSS": 443}


class RoutingError(Exception):
    """No way to a target: a URI scheme we cannot route (416) or a host that
    does not resolve (404). The branch fails with ``status`` (§16.7 step 6);
    the request itself was well formed, so this is not a ParseError."""

    def __init__(self, reason: str, status: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


def resolve_localhost(host: str) -> str | None:
    """The resolver a worker uses: ``localhost`` only. Other names need DNS
    (RFC 3263), which lives in the runtime once configured; numeric hosts
    never get here."""
    return "127.0.0.1" if host.lower() == "localhost" else None


@dataclass(frozen=True, slots=True)
class Hop:
    """Where to send a forwarded request (RFC 3263 reduced to numeric hosts;
    names resolve through ``resolve``)."""

    transport: str
    host: str
    port: int


class LocalAddresses:
    """The addresses that mean "this proxy" (§16.4): advertised edges plus
    local domains for Request-URIs."""

    def __init__(self, addresses: Iterable[str] = (), domains: Iterable[str] = ()) -> None:
        self.addresses: set[tuple[str, int | None]] = set()
        self.sent_by_texts: tuple[str, ...] = ()
        for text in addresses:
            self.add(text)
        self.domains = {d.lower() for d in domains}

    def add(self, hostport: str) -> None:
        host, port = split_hostport(hostport)
        self.addresses.add((host.lower(), port))
        self.sent_by_texts = tuple(sorted({f"{h}:{p}" if p else h for h, p in self.addresses}))

    def is_us(self, uri: URI) -> TypeGuard[SipURI]:
        if not isinstance(uri, SipURI):
            return False
        host = uri.host.lower()
        if uri.port is None:
            return any(h == host and (p in (None, 5060, 5061)) for h, p in self.addresses)
        return (host, uri.port) in self.addresses or (host, None) in self.addresses

    def is_local_domain(self, uri: URI) -> bool:
        return isinstance(uri, SipURI) and (uri.host.lower() in self.domains or self.is_us(uri))

    def is_us_via(self, via: Via) -> bool:
        host = via.host.lower()
        return (host, via.port) in self.addresses or (host, None) in self.addresses


@bounded_cache
def _is_numeric_host(host: str) -> bool:
    """An IPv4 or IPv6 literal (brackets removed)? Hosts repeat from message
    to message (edges, peers), so the answer is memoised."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@bounded_cache
def split_hostport(text: str) -> tuple[str, int | None]:
    """``host[:port]`` (hosts repeat: the edges' advertised addresses): memoised."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        host = f"[{host}]"
        return host, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, int(port) if port.isdigit() else None
    return text, None


def preprocess_routes(request: Request, local: LocalAddresses) -> tuple[SipURI, ...]:
    """RFC 3261 §16.4: undo a strict router's rewrite, drop our own Route.

    Returns the URIs of ours that were removed, topmost first: the
    Record-Route values we wrote when the dialog was set up, which carry its
    dialog token (``DialogTokens``)."""
    removed: list[SipURI] = []
    routes = request.routes
    if local.is_us(request.uri) and routes:
        # The previous hop was a strict router: the Request-URI is the
        # Record-Route value we inserted; the real target is the last Route.
        removed.append(request.uri)
        last = routes[-1]
        request.uri = last.uri
        request.set_values("Route", routes[:-1])
        routes = request.routes
    # RFC 5658 §4: with a double Record-Route both of our entries come back.
    own = 0
    for route in routes:
        uri = route.uri
        if not local.is_us(uri):
            break
        removed.append(uri)
        own += 1
    if own:
        request.set_values("Route", routes[own:])
    return tuple(removed)


def hop_for(uri: URI, *, default_transport: str = "UDP",
            resolve: Callable[[str], str | None] | None = None) -> Hop:
    """Next-hop address for ``uri`` (RFC 3263 §4 with numeric hosts; a name
    goes through ``resolve`` — DNS lives in the runtime, not here);
    RoutingError when there is none."""
    if not isinstance(uri, SipURI):
        raise RoutingError(f"cannot route to a {uri.scheme}: URI", 416)
    transport = (uri.transport or "").upper()
    if uri.scheme == "sips":
        transport = "TLS"
    if not transport:
        transport = default_transport
    host = uri.maddr or uri.host
    bare = host[1:-1] if host.startswith("[") else host
    if not _is_numeric_host(bare):
        resolved = resolve(bare) if resolve is not None else None
        if resolved is None:
            raise RoutingError(f"cannot resolve {bare}", 404)
        bare = resolved
    port = uri.port or DEFAULT_PORTS.get(transport, 5060)
    return Hop(transport, bare, port)


def next_hop(uri: URI, *, resolve: Callable[[str], str | None] | None = None) -> Hop | LocateTarget:
    """The next hop for ``uri``: an address when its host is numeric (or
    ``resolve`` knows the name), else what RFC 3263 must locate — the
    runtime's DNS does that (``cluster.dns``); RoutingError for a URI that
    is not SIP."""
    if not isinstance(uri, SipURI):
        raise RoutingError(f"cannot route to a {uri.scheme}: URI", 416)
    host = uri.maddr or uri.host
    bare = host[1:-1] if host.startswith("[") else host
    if _is_numeric_host(bare) or (resolve is not None and resolve(bare) is not None):
        return hop_for(uri, resolve=resolve)
    secure = uri.scheme == "sips"
    transport = (uri.transport or "").upper() or None
    if secure and transport in ("TCP", "WS"):
        # RFC 3261 §26.2.2: sips: with transport=tcp still means TLS over TCP.
        transport = "TLS" if transport == "TCP" else "WSS"
    return LocateTarget(bare, uri.port, transport, secure)


def next_hop_uri(request: Request) -> URI:
    """§16.6 step 6 / §8.1.2: the top Route if any, else the Request-URI."""
    routes = request.routes
    if routes:
        return routes[0].uri
    return request.uri


def forward_copy(
    request: Request,
    target: URI | None,
    *,
    via: Via,
    record_route: str | tuple[str, ...] | None,
    path: Iterable[str] = (),
    in_place: bool = False,
) -> Request:
    """The request to send on one branch (§16.6 steps 1–8).

    ``record_route``: our Record-Route value, or several (topmost first,
    see ``record_route_set``). ``in_place`` modifies ``request`` itself
    instead of a copy (step 1), for a request forwarded without a
    transaction that nothing reads afterwards (an ACK for a 2xx)."""
    out = request if in_place else request.copy()
    if target is not None:
        out.uri = target  # step 2
    mf = out.max_forwards
    out.set("Max-Forwards", 70 if mf is None else mf - 1)  # step 3
    if record_route is not None:
        values = (record_route,) if isinstance(record_route, str) else record_route
        for value in reversed(values):
            out.add("Record-Route", value, first=True)  # step 4
    path = list(path)
    if path:
        # RFC 3327 §5.3: the stored Path becomes the route to the contact.
        out.set_values("Route", [*path, *(str(r) for r in out.routes)])
    out.push_via(via)  # step 8
    return out


SHARD_PARAM = "wk"


def proxy_via(request: Request, transport: str, advertise: str, salt: str = "",
              shard: str | None = None) -> Via:
    """Our Via for a forwarded request; the branch is derived from the
    incoming transaction (§16.11), so a shard that takes over after a failure
    forwards a retransmission with the same branch. After a ``.`` it carries
    ``loop_hash(request)`` for loop detection (§16.6 step 8). ``shard`` names
    the worker holding the client transaction (``wk`` parameter): edges route
    the responses there while it is a member, even draining, and to the ring
    owner otherwise."""
    host, port = split_hostport(advertise)
    branch = f"{branch_for(request, salt)}.{loop_hash(request)}"
    params: Params = (("branch", branch), ("rport", None))
    if shard:
        params += ((SHARD_PARAM, shard),)
    return Via(transport, host, port, params)


def loop_hash(request: Request) -> str:
    """What makes a request the same request when it comes back (§16.6 step
    8): Request-URI as received, tags, Call-ID, CSeq number and the fields
    that steer proxies (Route, Proxy-Require). Vias and Max-Forwards change
    on every hop and are left out.

    Proxy-Authorization, which §16.6 also lists, is left out too: the hash is
    part of the branch, and a CANCEL forwarded by a shard that never saw its
    INVITE (§16.10, after a failover) must carry the INVITE's branch, but a
    CANCEL does not carry the INVITE's credentials (§9.1 copies only
    Request-URI, Call-ID, To, From, CSeq number and Route). A request that
    comes back with new credentials after a challenge also has a new CSeq
    number, so loops are told from spirals as before."""
    material = "\x00".join((
        str(request.uri), request.from_.tag or "", request.to.tag or "", request.call_id,
        str(request.cseq.seq), *request.get_all("route"), *request.get_all("proxy-require"),
    ))
    return hashlib.blake2s(material.encode("utf-8", "surrogateescape"), digest_size=8).hexdigest()


def loop_detected(request: Request, local: LocalAddresses) -> bool:
    """§16.3 step 4: a Via of ours means we forwarded this request before.
    It has looped if its loop hash is still the one we put in that Via's
    branch; a different one means it is spiralling (its Request-URI or
    route changed since), which is legitimate (RFC 5393 §4.2)."""
    digest = None
    addresses = local.addresses
    for via in request.vias:
        host = via.host.lower()
        if (host, via.port) not in addresses and (host, None) not in addresses:
            continue
        branch = via.branch or ""
        _, dot, part = branch.rpartition(".")
        if not dot:
            continue
        if digest is None:
            digest = loop_hash(request)
        if part == digest:
            return True
    return False


# RFC 7118 §5.2: SIP URIs have one transport value, "ws", for WS and WSS.
_URI_TRANSPORT = {"WSS": "ws"}


def uri_transport(transport: str) -> str:
    """The ``transport`` URI parameter value for a transport name."""
    return _URI_TRANSPORT.get(transport.upper(), transport.lower())


def record_route_value(advertise: str, transport: str, token: str | None = None,
                       flow: str | None = None) -> str:
    """One Record-Route URI of ours; ``flow`` is the flow token of the side
    that reaches us through this entry (``cluster.proxy.flows``)."""
    params = "" if transport.upper() == "UDP" else f";transport={uri_transport(transport)}"
    if token is not None:
        params += f";{TOKEN_PARAM}={token}"
    if flow is not None:
        params += f";{FLOW_PARAM}={flow}"
    return f"<sip:{advertise}{params};lr>"


def record_route_set(advertise: str, inbound: str, outbound: str,
                     token: str | None = None, *, inbound_flow: str | None = None,
                     outbound_flow: str | None = None, onward: str | None = None) -> tuple[str, ...]:
    """Our Record-Route values for a request that arrived over ``inbound``
    and leaves over ``outbound``, topmost first (§16.6 step 4).

    Each side of the dialog must reach us over the transport it uses: the
    callee takes the topmost entry, the caller the bottom one. With one
    transport a single entry names it (a UA on TCP gets ``transport=tcp``
    and keeps its in-dialog requests on TCP); when the transports differ,
    RFC 5658 §3.2 double Record-Route gives each side its own entry.
    ``token`` (``DialogTokens.make``) goes into every entry: both sides
    return it in their Route sets. ``inbound_flow`` and ``outbound_flow``
    are the flow tokens of the caller's and the callee's flows (RFC 5626
    §5.3): each goes into the entry its side reaches us through, so two
    flows need two entries even over one transport. ``onward`` is our
    address for the outbound transport when it differs from ``advertise``
    (the inbound one): each entry names the port its side reaches us on."""
    if inbound.upper() == outbound.upper() and (
            inbound_flow is None or outbound_flow is None or inbound_flow == outbound_flow):
        return (record_route_value(advertise, outbound, token, inbound_flow or outbound_flow),)
    return (record_route_value(onward or advertise, outbound, token, outbound_flow),
            record_route_value(advertise, inbound, token, inbound_flow))


TOKEN_PARAM = "sct"
"""The Record-Route URI parameter carrying the dialog token."""
_TOKEN_LABEL = b"sipcluster record-route dialog token v1"
_TOKEN_BYTES = 12  # 96 bits of HMAC-SHA256: beyond guessing within a dialog's life


class DialogTokens:
    """Stateless proof that the cluster record-routed and authorised a dialog.

    When a worker record-routes a dialog-creating request it writes
    ``make(call_id, from_tag)`` into its Record-Route URI; both UAs copy that
    URI into the Route set of every in-dialog request (RFC 3261 §12.1.1,
    §12.1.2). Any shard holding the same secret recognises the token, so no
    dialog state is shared or lost when a worker dies and another takes its
    Call-IDs (DESIGN §5). The token binds the Call-ID and the caller's tag,
    which requests from the caller carry in From and requests from the callee
    in To, so a token lifted from one dialog is worthless in another.

    The key is derived from the nonce secret with a label of its own: a
    nonce can never be presented as a token or the reverse."""

    __slots__ = ("_mac",)

    def __init__(self, secret: bytes) -> None:
        key = hmac.new(bytes(secret), _TOKEN_LABEL, hashlib.sha256).digest()
        self._mac = hmac.new(key, digestmod=hashlib.sha256)

    def make(self, call_id: str, caller_tag: str, scope: str = "") -> str:
        """The token for a dialog. ``scope`` is empty for a dialog set up by
        a trusted source or an authenticated user; for one set up by an
        unauthenticated caller (a call from outside to a local user) it names
        the host the request went to (``scope_for``), so the dialog's
        in-dialog requests can only reach that host or come from it, and a
        token obtained by calling a local user cannot carry a request
        anywhere else (no relay through an answered call)."""
        mac = self._mac.copy()
        mac.update(f"{call_id}\x00{caller_tag}\x00{scope}".encode("utf-8", "surrogateescape"))
        return base64.urlsafe_b64encode(mac.digest()[:_TOKEN_BYTES]).decode("ascii")

    @staticmethod
    def scope_for(host: str) -> str:
        return f"@{host.lower()}"

    def authorises(self, request: Request, ours: Iterable[SipURI], source_host: str) -> bool:
        """Whether the topmost of our removed Route entries (``ours``, from
        ``preprocess_routes``) carries a valid token for ``request``'s dialog,
        whichever side sent it (caller's tag in From or in To). A scoped
        token holds when the request goes to its host (the caller talking to
        the callee) or comes from it (the callee talking back)."""
        top = next(iter(ours), None)
        token = top.param(TOKEN_PARAM) if top is not None else None
        if not token or not token.isascii():
            return False
        uri = request.uri
        scopes = ["", self.scope_for(source_host)]
        if isinstance(uri, SipURI):
            scopes.append(self.scope_for(uri.host))
        for tag in (request.from_.tag, request.to.tag):
            if not tag:
                continue
            for scope in scopes:
                if hmac.compare_digest(self.make(request.call_id, tag, scope), token):
                    return True
        return False


def strip_own_route(routes: list[NameAddress], local: LocalAddresses) -> list[NameAddress]:
    return [r for r in routes if not local.is_us(r.uri)]
