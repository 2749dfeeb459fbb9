"""The edge's per-message path: frame → Call-ID → owner shard → envelope.

Everything here is synchronous and allocation-light: it runs once per
datagram inside the UDP drain loop, so it must never wait. A message that
cannot be forwarded is answered on the spot when it is a request (503 with
Retry-After when no worker can take it, 513 when it is too large) and counted
in every case (DESIGN §3: nothing disappears silently).

Tracing (DESIGN §9) costs one attribute test here when it is off; when it is
on, a message whose call is not sampled costs one hash of its Call-ID, and a
sampled one takes ``_forward_traced``, which puts the edge span's
``traceparent`` in the envelope.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from hashlib import blake2b as _blake2b

from cluster.defence import EdgeGuard
from cluster.defence.admission import ADMIT, DROP, Admission, classify
from cluster.link import Envelope, FrameQueue, Outbox, pack, pack_v2
from cluster.observability.tracing import Tracing, traceparent
from cluster.sharding.failover import Router
from cluster.sharding.ring import EmptyRing, Ring
from cluster.sip import ParseError, extract_call_id, reject_malformed

log = logging.getLogger("sipcluster.edge")

Address = tuple[str, int]

RETRY_AFTER_SECONDS = "2"

# Readings the edge gives its admission (AdmissionPolicy's default depth
# thresholds 0.5, 0.75, 0.95): a full UDP drain reaches level 2 at most
# (shed OPTIONS, REGISTER, garbage and other new requests; INVITEs still go
# through), a refusing worker link level 3 (new INVITEs answered 503 too).
DRAIN_DEPTH = 0.8
REFUSED_DEPTH = 1.0

_from_bytes = int.from_bytes

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
    def __init__(self, node_id: str, outbox: Outbox, *, max_message: int, server: str,
                 tracing: Tracing | None = None, guard: EdgeGuard | None = None,
                 stats: Counter[str] | None = None, admission: Admission | None = None,
                 router: Router | None = None) -> None:
        self.node_id = node_id
        self.admission = admission
        """Overload control (``cluster.defence.admission``): while its level is
        above 0, the classes it sheds are dropped or answered 503 here,
        before they cost a Call-ID search or a place in a worker's queue."""
        self.guard = guard
        """``cluster.defence.EdgeGuard``: bans, scanners and rate limits, checked first."""
        self.outbox = outbox
        self.max_message = max_message
        self.server = server
        self.router = router if router is not None else Router()
        """Etcd's ring with the workers whose link is down left out (``cluster.sharding.failover``)."""
        self.worker_links: dict[str, str] = {}
        self.link_workers: dict[str, str] = {}
        self._server_keys: dict[str, bytes] = {}
        """Endpoint -> worker id (the inverse of ``worker_links``)."""
        self.links_up: set[str] = set()
        """Endpoints whose link completed its handshake and has not dropped
        since (``link_up``/``link_down``, from the socket monitors)."""
        self.current = True
        """Whether this edge's etcd view is current (told to workers in each envelope)."""
        self.array_links: set[str] = set()
        """Worker endpoints that read version-2 envelopes (cluster.link)."""
        self.advertise: dict[str, str] = {}
        self.stats: Counter[str] = stats if stats is not None else Counter()
        """The edge's event counters (shared with what ``guard`` reports to)."""
        self.received: Counter[str] = Counter()
        """Messages read from the network by transport (keep-alives excluded);
        the listeners count, UDP once per drained batch."""
        self.tracing = tracing
        """Set when tracing is on."""
        self.admitted = 0
        """Messages past the guard since the last ``drained``."""

    @property
    def ring(self) -> Ring | None:
        """The ring messages are routed with (suspect workers left out)."""
        return self.router.effective

    def update(self, ring: Ring, worker_links: dict[str, str], array_links: set[str] | None = None,
               server_keys: dict[str, bytes] | None = None, present: set[str] | None = None) -> None:
        """Route with ``ring`` to ``worker_links`` (id -> endpoint);
        ``server_keys`` holds each endpoint's published CURVE key;
        ``present``, every worker in the view (draining ones too)."""
        router = self.router
        router.update(ring, worker_links.keys() if present is None else present, time.monotonic())
        # A worker that left within the pin time keeps its link (and its
        # endpoint's version and key): etcd may lose every lease in a few
        # revisions after a stall, and the ring is then held with these
        # links; responses for its client transactions still reach it.
        previous = self.worker_links
        kept = {w: previous[w] for w in (*router.held, *router.departed) if w in previous}
        worker_links = {**kept, **worker_links}
        self.array_links = set(array_links or ()) | {e for e in kept.values() if e in self.array_links}
        keys = {**self._server_keys, **(server_keys or {})}
        for endpoint in worker_links.values():
            self.outbox.connect(endpoint, keys.get(endpoint))
        for endpoint in set(self.outbox.endpoints()) - set(worker_links.values()):
            self.outbox.disconnect(endpoint)
        self._server_keys = {e: k for e, k in keys.items() if e in worker_links.values()}
        self.worker_links = worker_links
        self.link_workers = {endpoint: worker for worker, endpoint in worker_links.items()}

    def link_down(self, endpoint: str) -> None:
        """The link to ``endpoint`` is down: route around its worker."""
        self.links_up.discard(endpoint)
        worker = self.link_workers.get(endpoint)
        if worker is not None and self.router.suspect(worker, time.monotonic()):
            self.stats["link_suspect"] += 1
            log.warning("worker link down; routing around it", extra={"worker": worker, "link": endpoint})

    def link_up(self, endpoint: str) -> None:
        """The link to ``endpoint`` is up (again)."""
        self.links_up.add(endpoint)
        worker = self.link_workers.get(endpoint)
        if worker is not None and self.router.restore(worker, time.monotonic()):
            self.stats["link_restored"] += 1
            log.info("worker link up again", extra={"worker": worker, "link": endpoint})

    def _owner(self, call_id: bytes) -> str | None:
        try:
            return self.router.owner(call_id, time.monotonic())
        except EmptyRing:
            return None

    def _send_around(self, endpoint: str | None, envelope: bytes, env: Envelope, call_id: bytes) -> bool:
        """Send to ``endpoint``; when its link refuses, suspect its worker and
        send to the next owner on the ring (DESIGN §4: no request answered
        503 because a worker died). False when no worker could take it."""
        outbox = self.outbox
        for _ in range(8):  # a few workers at most die at once
            if endpoint is not None:
                if outbox.send(endpoint, envelope):
                    return True
                if endpoint in self.links_up:
                    # Connected, so its queue is full (overload control's
                    # business, ``refused``): the worker is alive.
                    return False
                self.link_down(endpoint)
            worker = self._owner(call_id)
            following = self.worker_links.get(worker) if worker is not None else None
            if following is None or following == endpoint:
                return False
            endpoint = following
            self.stats["rerouted_link_down"] += 1
            envelope = pack_v2(env) if endpoint in self.array_links else pack(env)
        return False

    def ingress(
        self, data: bytes, transport: str, source: Address, local: Address, conn: int | None,
        frames: FrameQueue | None = None,
    ) -> bytes | None:
        """Forward one message; returns an immediate answer to send back, if any.

        With ``frames`` (a listener draining several datagrams), a message
        for a worker that reads version-2 frames is queued there by
        endpoint instead of sent; ``flush`` sends each endpoint's queue as
        one ZeroMQ message and returns the answers for what it could not."""
        stats = self.stats
        guard = self.guard
        if guard is not None:
            # DESIGN §8 edge defences: what they drop gets no answer at all.
            dropped = guard.admit(data, source[0], time.time())
            if dropped is not None:
                stats[dropped] += 1
                return None
        admission = self.admission
        self.admitted += 1
        if admission is not None and admission.level:
            verdict = admission.verdict(classify(data), time.monotonic())
            if verdict is not ADMIT:
                if verdict is DROP:
                    stats["drop_shed"] += 1
                    return None
                stats["shed_rejected"] += 1
                return self._unavailable(data, "overloaded")
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
        worker = None
        if data[:4] == b"SIP/":
            # A response goes to the worker holding its client transaction
            # while that worker is a member (even draining): DESIGN §4.
            worker = response_shard(data)
            if worker is not None and worker not in self.router.suspects:
                endpoint = self.worker_links.get(worker)
        if endpoint is None:
            worker = self._owner(call_id)
            if worker is None:
                stats["unroutable_no_worker"] += 1
                return self._unavailable(data, "no worker in the ring")
            endpoint = self.worker_links.get(worker)
        tracing = self.tracing
        # The sampling decision inline (the ratio sampler's test on the low 64
        # bits of the call's trace id): an unsampled call costs one hash.
        if tracing is not None and _from_bytes(_blake2b(call_id, digest_size=16).digest()[8:], "big") \
                < tracing.bound and worker is not None:  # (a worker was found above)
            span = tracing.edge_receive(call_id, data, transport, source, worker)
            if span is not None:
                return self._forward_traced(span, data, transport, source, local, conn, endpoint,
                                            call_id)
        env = Envelope("in", self.node_id, transport, source, local, data, conn, time.time_ns(),
                       None, self.advertise.get(transport), self.node_id, self._epoch(), self.current)
        if endpoint in self.array_links:
            if frames is not None:
                frames.add(endpoint, env, (data, source, env, call_id))
                return None
            envelope = pack_v2(env)
        else:
            envelope = pack(env)
        if self._send_around(endpoint, envelope, env, call_id):
            stats["forwarded"] += 1
            return None
        stats["unroutable_link_down"] += 1
        self.refused()
        return self._unavailable(data, "worker link unavailable")

    def refused(self) -> None:
        """A worker link refused a message (its queue is full, or it is down):
        new requests are answered 503 at once for a while instead of being
        queued behind it (``REFUSED_DEPTH``)."""
        if self.admission is not None:
            self.admission.observe(time.monotonic(), depth=REFUSED_DEPTH)

    def drained(self, batch: int) -> None:
        """A listener ended a drain limited to ``batch`` datagrams. When what
        the guard let through fills the batch, more waits in the kernel and
        the edge is behind on real work: it sheds the cheapest classes (at
        most level 2, ``DRAIN_DEPTH``). Banned and scanner traffic, dropped
        for a dict lookup, is not counted: it must not cost legitimate
        OPTIONS and REGISTERs their place."""
        work, self.admitted = self.admitted, 0
        if self.admission is not None:
            self.admission.observe(time.monotonic(), depth=DRAIN_DEPTH * min(work, batch) / batch)

    def bug(self, what: str) -> None:
        """A bug met by one datagram, envelope or connection: logged with its
        traceback (call from an ``except`` block) and counted in the edge's
        counters; the caller goes on (alert SipclusterInternalErrors)."""
        log.exception(what)
        self.stats["internal_error"] += 1

    def flush(self, frames: FrameQueue) -> list[tuple[bytes, Address]]:
        """Send what ``ingress`` queued, one frame per worker endpoint, and
        empty ``frames``. Returns (answer, source) for each queued request a
        worker link refused (503, as ``ingress`` answers one at a time)."""
        answers: list[tuple[bytes, Address]] = []
        stats = self.stats
        send = self.outbox.send
        for endpoint, frame, queued in frames.take():
            if send(endpoint, frame):
                stats["forwarded"] += len(queued)
                stats["forwarded_frames"] += 1
                continue
            # A live link refused: its queue is full (answered 503, overload
            # control's business). A dead one: each message goes one by one
            # to the next owner (the frame's worker is suspect now).
            live = endpoint in self.links_up
            if not live:
                self.link_down(endpoint)
            for data, source, env, call_id in queued:
                if not live and self._send_around(None, b"", env, call_id):
                    stats["forwarded"] += 1
                    continue
                stats["unroutable_link_down"] += 1
                self.refused()
                answer = self._unavailable(data, "worker link unavailable")
                if answer is not None:
                    answers.append((answer, source))
        return answers

    def _epoch(self) -> int:
        ring = self.router.effective
        return ring.epoch if ring is not None else 0

    def _forward_traced(self, span, data: bytes, transport: str, source: Address, local: Address,
                        conn: int | None, endpoint: str | None, call_id: bytes) -> bytes | None:
        """``ingress`` for a sampled call: the envelope carries the span's traceparent."""
        env = Envelope("in", self.node_id, transport, source, local, data, conn, time.time_ns(),
                       traceparent(span), self.advertise.get(transport), self.node_id, self._epoch(),
                       self.current)
        envelope = (pack_v2 if endpoint in self.array_links else pack)(env)
        try:
            if self._send_around(endpoint, envelope, env, call_id):
                self.stats["forwarded"] += 1
                return None
            self.stats["unroutable_link_down"] += 1
            self.refused()
            span.set_attribute("sip.edge.outcome", "link_down")
            return self._unavailable(data, "worker link unavailable")
        finally:
            span.end()

    def _unavailable(self, data: bytes, why: str) -> bytes | None:
        answer = reject_malformed(
            data, ParseError(why, 503), server=self.server,
            headers=(("Retry-After", RETRY_AFTER_SECONDS),),
        )
        if answer is None:
            self.stats["drop_unroutable"] += 1
        return answer
