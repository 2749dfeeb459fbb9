"""DNS records as RFC 3263 reads them, and what a lookup returns: plain
values, no I/O (the runtime turns dnspython's answers into these)."""

from __future__ import annotations

from dataclasses import dataclass

NAPTR = "NAPTR"
SRV = "SRV"
A = "A"
AAAA = "AAAA"


@dataclass(frozen=True, slots=True)
class Naptr:
    """RFC 3403 §4.1; only ``flags``, ``service`` and ``replacement`` matter
    to RFC 3263 §4.1 (a SIP NAPTR has no regexp)."""

    order: int
    preference: int
    flags: str
    service: str
    replacement: str


@dataclass(frozen=True, slots=True)
class Srv:
    """RFC 2782: ``target`` "." means the service is decidedly not there."""

    priority: int
    weight: int
    port: int
    target: str


Record = Naptr | Srv | str
"""An A or AAAA record is its address text."""


@dataclass(frozen=True, slots=True)
class Query:
    name: str
    rdtype: str


# Why a lookup has no records. NXDOMAIN and NODATA are answers (RFC 2308
# negative caching); the others mean the DNS could not tell.
NXDOMAIN = "nxdomain"
NODATA = "nodata"
TIMEOUT = "timeout"
SERVFAIL = "servfail"
MALFORMED = "malformed"
LOOP = "cname loop"
REFUSED = "refused"
OVERLOADED = "resolver overloaded"
NEGATIVE = frozenset((NXDOMAIN, NODATA))


@dataclass(frozen=True, slots=True)
class Answer:
    """The records of one lookup and for how long they hold. ``error`` is
    None when ``records`` is the answer (never empty then), else one of the
    reasons above; a negative answer carries the TTL it may be cached for."""

    records: tuple[Record, ...]
    ttl: float
    error: str | None = None
    truncated: int = 0
    """Records left out because the answer held more than the resolver keeps."""

    @property
    def failed(self) -> bool:
        """The DNS could not answer (as opposed to: there is nothing)."""
        return self.error is not None and self.error not in NEGATIVE

    def size(self) -> int:
        """Roughly the bytes this answer holds, for the cache's byte bound."""
        total = 64
        for record in self.records:
            if isinstance(record, str):
                total += 48 + len(record)
            elif isinstance(record, Srv):
                total += 96 + len(record.target)
            else:
                total += 128 + len(record.service) + len(record.replacement) + len(record.flags)
        return total
