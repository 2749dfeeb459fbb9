"""The edge's per-message path: frame → Call-ID → owner shard → envelope.

Everything here is synchronous and allocation-light: it runs once per
datagram inside the UDP drain loop, so it must never wait. A message that
cannot be forwarded is answered on the spot when it is a request (503 with
Retry-After when no worker can take it, 513 when it is too large) and counted
in every case (DESIGN §3: nothing disappears silently).
"""

from __future__ import annotations

import re
import time
from collections import Counter

from cluster.link import Envelope, Outbox, pack
from cluster.sharding.ring import EmptyRing, Ring
from cluster.sip import ParseError, extract_call_id, reject_malformed

Address = tuple[str, int]

RETRY_AFTER_SECONDS = "2"

# The top Via of a response to a request one of our workers forwarded names
# that worker (``wk``, set by cluster.proxy.routing.proxy_via).
_TOP_VIA = re.compile(rb"\r\n(?:via|v)[ \t]*:([^\r\n,]*)", re.IGNORECASE)
_SHARD = re.compile(rb";[ \t]*wk=([A-Za-z0-9._-]+)")


def response_shard(data: bytes) -> str | None:
    """The worker named in a response's top Via, if any."""
    via = _TOP_VIA.search(data)
    if via is None:
        return None
    shard = _SHARD.search(via.group(1))
    return shard.group(1).decode() if shard else None


class Forwarder:
    def __init__(self, node_id: str, outbox: Outbox, *, max_message: int, server: str) -> None:
        self.node_id = node_id
        self.outbox = outbox
        self.max_message = max_message
        self.server = server
        self.ring: Ring | None = None
        self.worker_links: dict[str, str] = {}
        self.advertise: dict[str, str] = {}
        self.stats: Counter[str] = Counter()

    def update(self, ring: Ring, worker_links: dict[str, str]) -> None:
        for endpoint in worker_links.values():
            self.outbox.connect(endpoint)
        for endpoint in set(self.outbox.endpoints()) - set(worker_links.values()):
            self.outbox.disconnect(endpoint)
        self.ring = ring
        self.worker_links = worker_links

    def ingress(
        self, data: bytes, transport: str, source: Address, local: Address, conn: int | None
    ) -> bytes | None:
        """Forward one message; returns an immediate answer to send back, if any."""
        stats = self.stats
        if len(data) > self.max_message:
            stats["drop_oversize"] += 1
            return reject_malformed(data, ParseError("message too large", 513), server=self.server)
        try:
            call_id = extract_call_id(data)
        except ParseError:
            # Garbage or a message without Call-ID: no shard can own it.
            stats["drop_no_call_id"] += 1
            return None
        endpoint = None
        if data[:4] == b"SIP/":
            # A response goes to the worker holding its client transaction
            # while that worker is a member (even draining): DESIGN §4.
            shard = response_shard(data)
            if shard is not None:
                endpoint = self.worker_links.get(shard)
        if endpoint is None:
            ring = self.ring
            try:
                if ring is None:
                    raise EmptyRing("no ring yet")
                worker = ring.owner(call_id)
            except EmptyRing:
                stats["unroutable_no_worker"] += 1
                return self._unavailable(data, "no worker in the ring")
            endpoint = self.worker_links.get(worker)
        envelope = pack(Envelope(
            "in", self.node_id, transport, source, local, data, conn, time.time_ns(),
            None, self.advertise.get(transport), self.node_id,
        ))
        if endpoint is not None and self.outbox.send(endpoint, envelope):
            stats["forwarded"] += 1
            return None
        stats["unroutable_link_down"] += 1
        return self._unavailable(data, "worker link unavailable")

    def _unavailable(self, data: bytes, why: str) -> bytes | None:
        answer = reject_malformed(
            data, ParseError(why, 503), server=self.server,
            headers=(("Retry-After", RETRY_AFTER_SECONDS),),
        )
        if answer is None:
            self.stats["drop_unroutable"] += 1
        return answer
