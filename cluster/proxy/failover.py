"""Serial failover over the destinations of one branch (RFC 3263 §4.3), sans-IO.

A branch's next hop may have several destinations (SRV targets and their
addresses, in ``cluster.dns.rfc3263`` order). The first gets the request;
a 503, a transport error or a client transaction timeout (Timer B/F) with
no response moves the branch to the next, as a new client transaction with
a new Via branch. A destination that did not answer is blocked for a while
(``cluster.dns.Blocklist``) and skipped by the next requests. Any other
final response ends the branch: a 486 from one server of a domain means
the callee is busy whichever server is asked.

Also here: the final response for a next hop that does not resolve, with
the Warning saying why (ops/guide/dns.md has the table).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from cluster.dns.rfc3263 import Destination, Location

FAILOVER_STATUSES = frozenset({503})
"""Responses that move a branch to its next destination (§4.3)."""

UNRESOLVABLE = 480
"""The name has no SIP server (NXDOMAIN, no records, no usable transport)
or every destination is blocked: not 404 (upstream would read "no such
user"), not 6xx (it would end the other branches' search, RFC 3261 §16.7
step 10), not 503 (turned into 500 upstream, §16.7 step 6)."""
DNS_FAILED = 504
"""The DNS did not answer usably (timeout, SERVFAIL, malformed or oversized
answer, CNAME loop, lookup budget spent): RFC 3261 §21.5.5, no timely
response from an external server the proxy needed."""


@dataclass(slots=True)
class Attempts:
    """The destinations of one branch and how far it got through them."""

    destinations: tuple[Destination, ...]
    position: int = 0
    sent: int = 0
    """Client transactions started so far (the first keeps the branch's own
    Via branch; later ones get a new one)."""
    skipped: list[Destination] = field(default_factory=list)
    """Destinations passed over because they were blocked."""
    current: Destination | None = None

    def take(self, blocked: Callable[[Destination], bool]) -> Destination | None:
        """The next destination not blocked, None when none is left."""
        while self.position < len(self.destinations):
            destination = self.destinations[self.position]
            self.position += 1
            if blocked(destination):
                self.skipped.append(destination)
                continue
            self.current = destination
            self.sent += 1
            return destination
        return None

    @property
    def left(self) -> bool:
        return self.position < len(self.destinations)


def attempt_salt(salt: str, index: int, position: int) -> str:
    """The Via branch salt (``proxy_via``) of branch ``index``'s attempt at
    the destination in ``position`` of its location (0: the first). Each
    attempt is a new client transaction with a branch of its own (§4.3);
    the branch derives only from what every shard sees — the incoming
    transaction, the branch's index and the destination's place in the
    seeded order — so a shard without the INVITE's context derives the
    branch of every attempt again, for the CANCEL and the ACK of a non-2xx
    response (RFC 3261 §9.1, §17.1.1.3, §16.11)."""
    return f"{salt}{index}.{position + 1}" if position else f"{salt}{index}"


def location_failure(location: Location, host: str) -> tuple[int, str]:
    """The status and Warning text for a next hop with no destination."""
    if location.failed:
        return DNS_FAILED, f"DNS lookup for {host} failed ({location.detail})"
    return UNRESOLVABLE, f"cannot resolve {host} ({location.detail or location.error})"


def blocked_failure(host: str, skipped: list[Destination]) -> tuple[int, str]:
    shown = ", ".join(f"{d.host}:{d.port}/{d.transport.lower()}" for d in skipped[:3])
    return UNRESOLVABLE, f"every destination of {host} is blocked after failing ({shown})"


def warning(agent: str, text: str) -> tuple[str, str]:
    """A Warning header (RFC 3261 §20.43): code 399 (miscellaneous), our
    address as the agent, ``text`` as a quoted string."""
    quoted = text.replace("\\", "\\\\").replace('"', '\\"')
    quoted = "".join(c if c.isprintable() else "?" for c in quoted)
    return ("Warning", f'399 {agent} "{quoted}"')


def seed_for(call_id: str, seq: int, host: str) -> int:
    """The RFC 2782 selection seed of a request: from what every shard sees
    the same, so a shard that takes over a transaction (RFC 3261 §16.11)
    orders the destinations as the first one did and its retransmissions and
    CANCEL follow the original target."""
    material = f"{call_id}\x00{seq}\x00{host.lower()}".encode("utf-8", "surrogateescape")
    return int.from_bytes(hashlib.blake2s(material, digest_size=8).digest(), "big")
