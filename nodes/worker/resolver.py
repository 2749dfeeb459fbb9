"""The worker's DNS: RFC 3263 location (``cluster.dns``) driven against
dnspython's asynchronous resolver, which runs on trio.

The sans-IO ``locate`` procedure yields the lookups it needs; each is
answered from the per-node ``DnsCache`` or by one dnspython lookup (several
locations waiting for the same name share it). Nothing here blocks the event
loop: a location and all its lookups are bounded by ``dns.lifetime`` (and a
trio deadline just beyond it, in case a server keeps the resolver busy), and an answer is
reduced to plain records before the procedure sees it, so an oversized or
malformed answer, a CNAME loop or thousands of records end as a counted
failure or a truncated record list. ``locate`` always returns.

With ``dns.servers`` unset the system's configuration is read once at
start-up (``/etc/resolv.conf``), and ``/etc/hosts`` answers A and AAAA
lookups of the names it lists, as the C library's resolver would.
"""

from __future__ import annotations

import contextvars
import ipaddress
import logging
import random
from collections import Counter
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import trio

from cluster.config import SUPPORTED_TRANSPORTS, DnsConfig
from cluster.dns.blocklist import Blocklist
from cluster.dns.cache import CacheLimits, DnsCache
from cluster.dns.records import (
    LOOP, MALFORMED, NODATA, NXDOMAIN, OVERLOADED, REFUSED, SERVFAIL, TIMEOUT, Answer, Naptr, Query,
    Record, Srv,
)
from cluster.dns.rfc3263 import Limits, Location, Target, locate
from cluster.observability.tracing import Tracing
from cluster.tu import TransactionUser
from cluster.tu.outputs import Resolve

log = logging.getLogger("sipcluster.worker.dns")

MAX_RECORDS = 256
"""Records of one answer kept (the procedure uses fewer; more is a hostile
or broken zone, counted as truncated)."""
MAX_PENDING = 1024
"""Lookups in flight at once; beyond it a location fails at once (counted)
rather than queueing without bound behind a silent server."""
SUPPORTED = tuple(t.upper() for t in SUPPORTED_TRANSPORTS)
"""Transports the edges reach peers over (``cluster.config.SUPPORTED_TRANSPORTS``)."""


class Resolver:
    """``locate(target, seed)`` for the worker; ``stats`` counts events."""

    def __init__(self, config: DnsConfig, stats: Counter[str] | None = None, *,
                 supported: tuple[str, ...] = SUPPORTED, hosts: Path | None = Path("/etc/hosts"),
                 limits: Limits | None = None) -> None:
        self.stats: Counter[str] = stats if stats is not None else Counter()
        self.supported = supported
        self.limits = limits or Limits()
        self.lifetime = config.lifetime
        self.negative_ttl = config.negative_ttl
        self.cache = DnsCache(CacheLimits(entries=config.cache_entries, bytes=config.cache_bytes),
                              count=self._count)
        servers = config.server_addresses()
        # configure=False: no file is read when the servers are given.
        resolver = self.resolver = dns.asyncresolver.Resolver(configure=not servers)
        if servers:
            resolver.nameservers = [dns.nameserver.Do53Nameserver(address, port) for address, port in servers]
        resolver.timeout = config.timeout
        resolver.lifetime = config.lifetime
        resolver.cache = None  # ours honours negative answers and is bounded in bytes
        self.hosts: dict[tuple[str, str], tuple[str, ...]] = {}
        if not servers and hosts is not None:
            self.hosts = read_hosts(hosts)
        self._pending: dict[Query, _Lookup] = {}
        _preload()

    def _count(self, event: str) -> None:
        self.stats[event] += 1

    async def locate(self, target: Target, seed: int) -> Location:
        """RFC 3263 §4 for ``target``, the RFC 2782 order seeded by ``seed``."""
        procedure = locate(target, self.supported, random.Random(seed), self.limits)
        # dns.lifetime bounds the whole location, not each of its lookups:
        # behind a silent server the NAPTR, SRV and A/AAAA lookups would
        # otherwise wait one after the other.
        deadline = trio.current_time() + self.lifetime
        try:
            query = next(procedure)
            while True:
                answer = await self.lookup(query, deadline)
                query = procedure.send(answer)
        except StopIteration as stop:
            location: Location = stop.value
        if location.truncated:
            self.stats["dns_records_truncated"] += location.truncated
        self.stats["dns_located" if location.destinations else
                   "dns_failed" if location.failed else "dns_not_found"] += 1
        return location

    async def lookup(self, query: Query, deadline: float | None = None) -> Answer:
        """One lookup, from the cache or a server; a server's answer must come
        by ``deadline`` (default: ``dns.lifetime`` from now)."""
        now = trio.current_time()
        cached = self.cache.get(query, now)
        if cached is not None:
            return cached
        known = self.hosts.get((query.name.lower().rstrip("."), query.rdtype))
        if known is not None:
            return Answer(known, self.negative_ttl or 1.0)
        pending = self._pending.get(query)
        if pending is not None:
            # The same lookup is under way for another location: share it.
            self.stats["dns_lookup_shared"] += 1
            await pending.done.wait()
            return pending.answer
        remaining = (deadline - now) if deadline is not None else self.lifetime
        if remaining <= 0.01:
            self.stats["dns_lookup_not_asked"] += 1
            return Answer((), 0.0, TIMEOUT)
        if len(self._pending) >= MAX_PENDING:
            self.stats["dns_overloaded"] += 1
            return Answer((), 0.0, OVERLOADED)
        pending = self._pending[query] = _Lookup()
        try:
            answer = pending.answer = await self._ask(query, remaining)
            self.cache.put(query, answer, trio.current_time())
        finally:
            del self._pending[query]
            pending.done.set()
        self.stats[f"dns_lookup_{answer.error or 'ok'}".replace(" ", "_")] += 1
        return answer

    async def _ask(self, query: Query, lifetime: float) -> Answer:
        self.stats["dns_queries"] += 1
        answer = None
        # dnspython stops at ``lifetime``; the trio deadline just beyond it
        # holds even if a server keeps a TCP fallback open.
        with trio.move_on_after(lifetime + 0.5):
            answer = await self._resolve(query, lifetime)
        return answer if answer is not None else Answer((), 0.0, TIMEOUT)

    async def _resolve(self, query: Query, lifetime: float) -> Answer:
        try:
            result = await self.resolver.resolve(query.name, query.rdtype, raise_on_no_answer=False,
                                                 search=False, lifetime=lifetime)
        except dns.resolver.NXDOMAIN as error:
            return Answer((), self._negative_ttl(error.responses().values()), NXDOMAIN)
        except dns.resolver.LifetimeTimeout:
            return Answer((), 0.0, TIMEOUT)
        except dns.resolver.NoNameservers as error:
            return Answer((), 0.0, _classify(str(error)))
        except (dns.resolver.YXDOMAIN, dns.name.NameTooLong, dns.name.EmptyLabel, dns.name.LabelTooLong):
            return Answer((), 0.0, MALFORMED)
        except dns.exception.DNSException as error:
            return Answer((), 0.0, _classify(f"{type(error).__name__} {error}"))
        rrset = result.rrset
        if rrset is None:
            return Answer((), self._negative_ttl([result.response]), NODATA)
        records: list[Record] = []
        for rdata in rrset:
            if len(records) >= MAX_RECORDS:
                break
            record = _record(rdata)
            if record is not None:
                records.append(record)
        if not records:
            return Answer((), self._negative_ttl([result.response]), NODATA)
        ttl = result.chaining_result.minimum_ttl if result.chaining_result is not None else rrset.ttl
        return Answer(tuple(records), float(ttl), truncated=max(0, len(rrset) - MAX_RECORDS))

    def _negative_ttl(self, responses: object) -> float:
        """RFC 2308 §5: the SOA's minimum (bounded by its own TTL), else
        ``dns.negative_ttl``."""
        for response in responses:  # type: ignore[attr-defined]
            if not isinstance(response, dns.message.Message):
                continue
            for rrset in response.authority:
                if rrset.rdtype == dns.rdatatype.SOA:
                    return float(min(rrset.ttl, rrset[0].minimum))
        return self.negative_ttl


def _preload() -> None:
    """Import what dnspython loads on first use — its trio backend, the
    record types' parsers — now, at start-up: the first lookup would
    otherwise compile and import them on the event loop (about 0.2 s)."""
    import importlib

    import dns.asyncbackend
    dns.asyncbackend.get_backend("trio")
    for module in ("dns.rdtypes.IN.A", "dns.rdtypes.IN.AAAA", "dns.rdtypes.IN.SRV", "dns.rdtypes.IN.NAPTR",
                   "dns.rdtypes.ANY.SOA", "dns.rdtypes.ANY.CNAME", "dns.rdtypes.ANY.OPT", "dns.edns",
                   "dns.query", "dns.asyncquery"):
        importlib.import_module(module)


class _Lookup:
    """A lookup under way, shared by the locations that need it."""

    __slots__ = ("answer", "done")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.answer = Answer((), 0.0, TIMEOUT)
        """A cancelled lookup leaves its waiters this."""


def _record(rdata: object) -> Record | None:
    rdtype = getattr(rdata, "rdtype", None)
    if rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
        return str(rdata.address)  # type: ignore[attr-defined]
    if rdtype == dns.rdatatype.SRV:
        return Srv(rdata.priority, rdata.weight, rdata.port,  # type: ignore[attr-defined]
                   rdata.target.to_text(omit_final_dot=True) or ".")  # type: ignore[attr-defined]
    if rdtype == dns.rdatatype.NAPTR:
        return Naptr(rdata.order, rdata.preference,  # type: ignore[attr-defined]
                     rdata.flags.decode("ascii", "replace"),  # type: ignore[attr-defined]
                     rdata.service.decode("ascii", "replace"),  # type: ignore[attr-defined]
                     rdata.replacement.to_text(omit_final_dot=True))  # type: ignore[attr-defined]
    return None


def _classify(text: str) -> str:
    """The reason for a lookup no server answered usably, from dnspython's
    account of each server's error."""
    lowered = text.lower()
    if "chaintoolong" in lowered or "chain" in lowered and "long" in lowered:
        return LOOP
    if "servfail" in lowered:
        return SERVFAIL
    if "refused" in lowered:
        return REFUSED
    if "timed out" in lowered or "timeout" in lowered:
        return TIMEOUT
    return MALFORMED


def read_hosts(path: Path) -> dict[tuple[str, str], tuple[str, ...]]:
    """``/etc/hosts`` as {(name, "A" | "AAAA"): addresses}; unreadable = empty."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return {}
    table: dict[tuple[str, str], list[str]] = {}
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        try:
            address = ipaddress.ip_address(fields[0].split("%", 1)[0])
        except ValueError:
            continue
        rdtype = "A" if address.version == 4 else "AAAA"
        for name in fields[1:]:
            table.setdefault((name.lower().rstrip("."), rdtype), []).append(str(address))
    return {key: tuple(dict.fromkeys(values)) for key, values in table.items()}


Deliver = Callable[[int, Location, contextvars.Context], None]
Execute = Callable[[list, float], None]


class WorkerDns:
    """The worker's side of the TU's ``Resolve`` outputs: each becomes a task
    on the worker's nursery; its location is delivered to the TU
    (``Locating.deliver``) and the timer task woken (``kick``), whose run
    answers it (``answer``) — sends batched per edge and a bug costing that
    answer, as for any timer. ``blocklist`` is the TU's (destinations that
    did not answer, counted in ``stats``). With ``tracing``, a traced
    request's location is a ``dns.locate`` span under the request's span,
    and what the answer sends is traced under the request's span too, as if
    it had not waited."""

    def __init__(self, config: DnsConfig, stats: Counter[str], kick: Callable[[], None],
                 tracing: Tracing | None = None) -> None:
        self.resolver = Resolver(config, stats)
        self.blocklist = Blocklist(config.block_time, count=lambda event: stats.update((event,)))
        self.tracing = tracing
        self._kick = kick

    def start(self, nursery: trio.Nursery | None, resolve: Resolve, tu: TransactionUser | None) -> None:
        assert nursery is not None and tu is not None  # both exist before any message is handled
        locating = tu.locating

        def deliver(ticket: int, location: Location, scope: contextvars.Context) -> None:
            locating.deliver(ticket, location, scope)
            self._kick()
        # The task inherits the context of the message that asked: its span.
        nursery.start_soon(serve, self.resolver, resolve.ticket, resolve.target, resolve.seed, deliver,
                           self.tracing)

    def answer(self, tu: TransactionUser, execute: Execute, now: float,
               bug: Callable[[str], None]) -> None:
        """Answer the delivered locations (``TransactionUser.resolved``) and
        carry out what each brings, each in the context of the request that
        waited for it; a bug costs that answer (``bug`` logs and counts it)."""
        for ticket, location, scope in tu.locating.take_delivered():
            try:
                if isinstance(scope, contextvars.Context):
                    scope.run(_answer, tu, execute, ticket, location, now)
                else:
                    _answer(tu, execute, ticket, location, now)
            except Exception:  # noqa: BLE001 - a bug costs this answer, not the timer run
                bug("DNS answer handling failed")


def _answer(tu: TransactionUser, execute: Execute, ticket: int, location: Location, now: float) -> None:
    execute(tu.resolved(ticket, location, now), now)


async def serve(resolver: Resolver, ticket: int, target: Target, seed: int, deliver: Deliver,
                tracing: Tracing | None = None) -> None:
    """One ``Resolve`` output of the TU: locate, then hand the location back
    with this task's context (the request's span current). A bug costs this
    location a failure answer, never the worker."""
    span_scope = nullcontext() if tracing is None else tracing.child(
        "dns.locate", {"dns.target": target.host, "dns.transport": target.transport or ""})
    try:
        with span_scope as span:
            location = await resolver.locate(target, seed)
            if span is not None:
                span.set_attribute("dns.destinations", len(location.destinations))
                if location.error:
                    span.set_attribute("dns.error", location.error)
    except Exception:  # a bug costs this location, not the worker's nursery
        log.exception("DNS location failed", extra={"host": target.host})
        resolver.stats["internal_error"] += 1
        location = Location((), "internal error", f"{target.host}: internal error", failed=True)
    deliver(ticket, location, contextvars.copy_context())
