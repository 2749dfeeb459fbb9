"""Request forwarding rules of a stateful proxy (RFC 3261 §16.4–§16.6), sans-IO.

The proxy's identity is the set of addresses it advertises (the edges'
public host:port): a Route or Request-URI naming one of them is "us". Record-
Route always carries an advertised edge address, never a worker (DESIGN §5),
so in-dialog requests reach whichever shard owns the Call-ID now.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Iterable

from cluster.sip import NameAddress, ParseError, Request, SipURI, URI, Via
from cluster.sip.transaction.stateless import branch_for

DEFAULT_PORTS = {"UDP": 5060, "TCP": 5060, "TLS": 5061, "WS": 80, "WSS": 443}


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

    def is_us(self, uri: URI) -> bool:
        if not isinstance(uri, SipURI):
            return False
        host = uri.host.lower()
        if uri.port is None:
            return any(h == host and (p in (None, 5060, 5061)) for h, p in self.addresses)
        return (host, uri.port) in self.addresses or (host, None) in self.addresses

    def is_local_domain(self, uri: URI) -> bool:
        return isinstance(uri, SipURI) and (uri.host.lower() in self.domains or self.is_us(uri))


@lru_cache(maxsize=4096)
def _is_numeric_host(host: str) -> bool:
    """An IPv4 or IPv6 literal (brackets removed)? Hosts repeat from message
    to message (edges, peers), so the answer is memoised."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@lru_cache(maxsize=4096)
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


def preprocess_routes(request: Request, local: LocalAddresses) -> None:
    """RFC 3261 §16.4: undo a strict router's rewrite, drop our own Route."""
    routes = request.routes
    if local.is_us(request.uri) and routes:
        # The previous hop was a strict router: the Request-URI is the
        # Record-Route value we inserted; the real target is the last Route.
        last = routes[-1]
        request.uri = last.uri
        request.set_values("Route", routes[:-1])
        routes = request.routes
    # RFC 5658 §4: with a double Record-Route both of our entries come back.
    own = 0
    while own < len(routes) and local.is_us(routes[own].uri):
        own += 1
    if own:
        request.set_values("Route", routes[own:])


def hop_for(uri: URI, *, default_transport: str = "UDP",
            resolve: Callable[[str], str | None] | None = None) -> Hop:
    """Next-hop address for ``uri`` (RFC 3263 §4 with numeric hosts; a name
    goes through ``resolve`` — DNS lives in the runtime, not here)."""
    if not isinstance(uri, SipURI):
        raise ParseError(f"cannot route to a {uri.scheme}: URI", 416)
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
            raise ParseError(f"cannot resolve {bare}", 404)
        bare = resolved
    port = uri.port or DEFAULT_PORTS.get(transport, 5060)
    return Hop(transport, bare, port)


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
    params: tuple = (("branch", branch), ("rport", None))
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


def record_route_value(advertise: str, transport: str) -> str:
    params = "" if transport.upper() == "UDP" else f";transport={transport.lower()}"
    return f"<sip:{advertise}{params};lr>"


def record_route_set(advertise: str, inbound: str, outbound: str) -> tuple[str, ...]:
    """Our Record-Route values for a request that arrived over ``inbound``
    and leaves over ``outbound``, topmost first (§16.6 step 4).

    Each side of the dialog must reach us over the transport it uses: the
    callee takes the topmost entry, the caller the bottom one. With one
    transport a single entry names it (a UA on TCP gets ``transport=tcp``
    and keeps its in-dialog requests on TCP); when the transports differ,
    RFC 5658 §3.2 double Record-Route gives each side its own entry."""
    downstream = record_route_value(advertise, outbound)
    if inbound.upper() == outbound.upper():
        return (downstream,)
    return (downstream, record_route_value(advertise, inbound))


def strip_own_route(routes: list[NameAddress], local: LocalAddresses) -> list[NameAddress]:
    return [r for r in routes if not local.is_us(r.uri)]
