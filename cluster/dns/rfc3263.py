"""Locating SIP servers (RFC 3263 §4), sans-IO.

``locate`` is a generator: it yields each DNS ``Query`` it needs and is sent
the ``Answer``; when it returns, the value is a ``Location`` — the ordered
destinations to try (§4.3 failover goes down the list) or why there are
none. The runtime drives it against dnspython and its cache; the unit tests
drive it with records in hand. Randomness (RFC 2782 weighted selection) comes
from the ``random.Random`` passed in, so a test — or a shard taking over a
transaction (RFC 3261 §16.11), seeding it from the request — gets the same
order again.

    §4.1 transport: an explicit ``transport=`` wins; a numeric host or an
         explicit port means UDP (TLS for sips:); else NAPTR records of the
         supported services by order and preference (sips: keeps only
         SIPS+D2x), else SRV for each supported transport, else UDP (TLS).
    §4.2 destination: SRV by priority, RFC 2782 weighted order within one;
         without SRV, A and AAAA of the host at the transport's default port.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass

from .records import (
    A, AAAA, NAPTR, NODATA, NXDOMAIN, SRV, Answer, Naptr, Query, Srv,
)

# RFC 3263 §4.1 (and RFC 7118 §5 for WebSocket): NAPTR service -> transport.
SERVICES = {"SIP+D2U": "UDP", "SIP+D2T": "TCP", "SIPS+D2T": "TLS", "SIP+D2W": "WS", "SIPS+D2W": "WSS"}
SECURE = frozenset(("TLS", "WSS"))
# §4.1: the SRV name for a transport when there is no NAPTR.
SRV_PREFIXES = {"UDP": "_sip._udp.", "TCP": "_sip._tcp.", "TLS": "_sips._tcp.",
                "WS": "_sip._ws.", "WSS": "_sips._ws."}
DEFAULT_PORTS = {"UDP": 5060, "TCP": 5060, "TLS": 5061, "WS": 80, "WSS": 443}


@dataclass(frozen=True, slots=True)
class Destination:
    transport: str
    host: str
    port: int

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.transport, self.host, self.port)


@dataclass(frozen=True, slots=True)
class Location:
    """Where a SIP URI leads: ``destinations`` in the order to try them; when
    there are none, ``error`` says why (a ``records`` reason: negative —
    the name has no SIP server — or a failure of the DNS) and ``detail``
    says it for people (the Warning of the final response)."""

    destinations: tuple[Destination, ...]
    error: str | None = None
    detail: str = ""
    failed: bool = False
    """The DNS could not answer (timeout, SERVFAIL, ...), as opposed to: it
    answered that there is nothing."""
    truncated: int = 0
    """Records left out (too many in an answer, or the lookup budget spent)."""


@dataclass(frozen=True, slots=True)
class Limits:
    max_queries: int = 24
    """Lookups one location may make; the rest are not asked (an SRV set of
    thousands of targets, each needing its A lookup, ends here)."""
    max_records: int = 32
    """Records of one answer that are used (the lowest order/priority first)."""
    max_destinations: int = 16


@dataclass(frozen=True, slots=True)
class Target:
    """What RFC 3263 starts from (§4): the URI's scheme, host (maddr if
    present), port and transport parameter."""

    host: str
    port: int | None = None
    transport: str | None = None
    secure: bool = False


Procedure = Generator[Query, Answer, Location]


def is_numeric(host: str) -> bool:
    try:
        ipaddress.ip_address(host[1:-1] if host.startswith("[") else host)
    except ValueError:
        return False
    return True


def locate(target: Target, supported: Iterable[str], rng: random.Random,
           limits: Limits = Limits()) -> Procedure:
    """RFC 3263 §4 for ``target`` over the transports in ``supported``."""
    state = _State(limits)
    supported = frozenset(t.upper() for t in supported)
    host = target.host.rstrip(".").lower() if not is_numeric(target.host) else target.host
    transport = target.transport.upper() if target.transport else None
    default = "TLS" if target.secure else "UDP"
    if transport is not None and transport not in supported:
        return state.nothing(NODATA, f"transport {transport} is not supported here")
    if target.secure and transport is not None and transport not in SECURE:
        # RFC 3261 §19.1.2 / §26.2: sips: demands TLS on every hop.
        return state.nothing(NODATA, f"a sips: URI cannot use transport {transport}")
    if is_numeric(host) or target.port is not None:
        # §4.1: numeric host or explicit port -> UDP (TLS), no NAPTR or SRV;
        # §4.2: a name with a port is looked up with A/AAAA only.
        chosen = transport or default
        port = target.port or DEFAULT_PORTS[chosen]
        if is_numeric(host):
            return Location((Destination(chosen, host.strip("[]"), port),))
        addresses = yield from state.addresses(host)
        return state.done([Destination(chosen, a, port) for a in addresses], host)
    services: list[tuple[str, str]] = []  # (SRV name, transport)
    if transport is not None:
        services = [(SRV_PREFIXES[transport] + host, transport)]
    else:
        naptrs = yield from state.ask(Query(host, NAPTR))
        services = usable_naptrs(naptrs, supported, target.secure, limits.max_records)
        if services:
            default = services[0][1]
        else:
            # §4.1: no (usable) NAPTR -> SRV for each supported transport.
            wanted = ["TLS"] if target.secure else ["UDP", "TCP", "TLS"]
            services = [(SRV_PREFIXES[t] + host, t) for t in wanted if t in supported]
            if not services:
                return state.nothing(NODATA, f"no transport for {'sips' if target.secure else 'sip'}: "
                                             "is supported here")
    destinations: list[Destination] = []
    any_srv = False
    for name, chosen in services:
        records = yield from state.ask(Query(name, SRV))
        srvs = [r for r in records if isinstance(r, Srv)]
        any_srv = any_srv or bool(srvs)
        for srv in srv_order(srvs[: limits.max_records * 4], rng)[: limits.max_records]:
            if srv.target in (".", ""):
                continue  # RFC 2782: the service is decidedly not available there
            if state.spent() or len(destinations) >= limits.max_destinations:
                state.truncated += 1
                continue
            addresses = yield from state.addresses(srv.target.rstrip(".").lower())
            destinations.extend(Destination(chosen, a, srv.port) for a in addresses)
        if state.spent():
            break
    if any_srv:
        return state.done(destinations, host)
    # §4.2: no SRV records -> A/AAAA of the host, default port of the transport.
    addresses = yield from state.addresses(host)
    return state.done([Destination(default, a, DEFAULT_PORTS[default]) for a in addresses], host)


def usable_naptrs(records: Sequence[object], supported: frozenset[str], secure: bool,
                  limit: int) -> list[tuple[str, str]]:
    """§4.1: the NAPTR records that lead to a SIP service we can use, by
    order then preference, as (SRV name, transport)."""
    usable = []
    for record in records:
        if not isinstance(record, Naptr) or record.flags.lower() != "s":
            continue  # only "s" (an SRV lookup next) is defined for SIP
        transport = SERVICES.get(record.service.upper())
        if transport is None or transport not in supported:
            continue
        if secure and transport not in SECURE:
            continue  # a sips: URI discards the non-SIPS records
        usable.append(record)
    usable.sort(key=lambda r: (r.order, r.preference))
    return [(r.replacement.rstrip(".").lower(), SERVICES[r.service.upper()]) for r in usable[:limit]]


def srv_order(records: Sequence[Srv], rng: random.Random) -> list[Srv]:
    """RFC 2782: lowest priority first; within a priority, repeatedly pick a
    record with probability proportional to its weight (weight 0 records
    first in the running list, so they are picked rarely but can be)."""
    out: list[Srv] = []
    for priority in sorted({r.priority for r in records}):
        group = [r for r in records if r.priority == priority]
        group.sort(key=lambda r: r.weight != 0)
        while group:
            total = sum(r.weight for r in group)
            pick = rng.randint(0, total)
            running = 0
            for index, record in enumerate(group):
                running += record.weight
                if running >= pick:
                    out.append(group.pop(index))
                    break
    return out


class _State:
    """What one location has asked so far."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.queries = 0
        self.truncated = 0
        self.failure: tuple[str, str] | None = None
        self.negative: tuple[str, str] | None = None

    def spent(self) -> bool:
        return self.queries >= self.limits.max_queries

    def ask(self, query: Query) -> Generator[Query, Answer, tuple[object, ...]]:
        if self.spent():
            self.truncated += 1
            return ()
        self.queries += 1
        answer = yield query
        self.truncated += answer.truncated
        if answer.error is None:
            return answer.records
        detail = f"{query.rdtype} {query.name}: {answer.error}"
        if answer.failed:
            self.failure = self.failure or (answer.error, detail)
        elif self.negative is None or answer.error == NXDOMAIN:
            self.negative = (answer.error, detail)
        return ()

    def addresses(self, name: str) -> Generator[Query, Answer, list[str]]:
        found: list[str] = []
        for rdtype in (A, AAAA):
            records = yield from self.ask(Query(name, rdtype))
            found.extend(r for r in records if isinstance(r, str))
        return found[: self.limits.max_records]

    def nothing(self, error: str, detail: str) -> Location:
        return Location((), error, detail)

    def done(self, destinations: list[Destination], host: str) -> Location:
        unique = list(dict.fromkeys(destinations))[: self.limits.max_destinations]
        if unique:
            return Location(tuple(unique), truncated=self.truncated)
        if self.failure is not None:
            # Some lookup could not be answered: the name may well exist.
            return Location((), self.failure[0], self.failure[1], failed=True, truncated=self.truncated)
        if self.spent():
            return Location((), "lookup budget", f"{host}: more than {self.limits.max_queries} "
                            "lookups needed", failed=True, truncated=self.truncated)
        error, detail = self.negative or (NODATA, f"{host}: no SIP server records")
        return Location((), error, detail, truncated=self.truncated)


def run(procedure: Procedure, answers: dict[Query, Answer]) -> Location:
    """Drive ``procedure`` from a table of answers (NXDOMAIN for the rest):
    for tests and for callers that hold every record already."""
    try:
        query = next(procedure)
        while True:
            answer = answers.get(query) or Answer((), 60.0, NXDOMAIN)
            query = procedure.send(answer)
    except StopIteration as stop:
        location: Location = stop.value
        return location
